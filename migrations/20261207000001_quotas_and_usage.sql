-- Quotas on shares, budgets on instances, their counters, and the daily usage ledger.
--
-- A quota is a JSON array of limits, `[{"metric": "requests", "period": "minute", "limit": 10}]`
-- (metric `requests` or `input_tokens`; period `minute`, `hour`, `day` or `month`, calendar
-- windows in UTC). NULL: no limit. `shares.quota` limits one grantee's calls (and those of a
-- service account acting for them); `instances.quota` is a budget over every caller.
ALTER TABLE instances ADD COLUMN quota jsonb CHECK (jsonb_typeof(quota) = 'array');
ALTER TABLE shares ADD COLUMN quota jsonb CHECK (jsonb_typeof(quota) = 'array');

-- What each limit has counted in its current window: one row per instance and scope
-- (`grantee_id` 0 is the instance's budget, any other value the share quota of that user), with
-- a slot per metric and period: slot = (metric - 1) * 4 + period, metrics and periods numbered
-- as in the proto enums (metric 1 requests, 2 input tokens; period 1 minute, 2 hour, 3 day,
-- 4 month). A slot's count starts again at zero when its window moves. One row per scope, not
-- per limit, so that a call updates at most two rows whatever its limits.
CREATE TABLE quota_counters (
    instance_id   bigint        NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    grantee_id    bigint        NOT NULL,
    window_starts timestamptz[] NOT NULL,
    used          bigint[]      NOT NULL,
    PRIMARY KEY (instance_id, grantee_id),
    CHECK (cardinality(window_starts) = 8 AND cardinality(used) = 8)
);

-- The start of the calendar window (UTC) of `period` that holds `moment`.
CREATE FUNCTION quota_window_start(period smallint, moment timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT date_trunc(CASE period WHEN 1 THEN 'minute' WHEN 2 THEN 'hour' WHEN 3 THEN 'day'
                                  ELSE 'month' END, moment, 'UTC')
$$;

-- The end of the window of `period` that starts at `start` (month arithmetic in UTC, whatever
-- the session's time zone).
CREATE FUNCTION quota_window_end(period smallint, start timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT ((start AT TIME ZONE 'UTC')
            + CASE period WHEN 1 THEN interval '1 minute' WHEN 2 THEN interval '1 hour'
                          WHEN 3 THEN interval '1 day' ELSE interval '1 month' END)
           AT TIME ZONE 'UTC'
$$;

-- Reserves a batch of calls, in the order given, each against its claims, after applying the
-- settlements of earlier calls waiting for these rows. The batch's counter rows come first
-- (`r_instance`, `r_grantee`: distinct, in key order); then the settlements (`s_*`, one element
-- per correction: its row, 1-based into `r_*`, its slot, the window it was reserved in, and what
-- the reservation was off by; one for a window since moved on is dropped); then one element
-- per claim: its call (`c_call`, 1-based, ascending), its row (1-based into `r_*`), its slot,
-- period, limit and amount. Each call takes all its claims or none: when one would pass its
-- limit, the call takes nothing and `refused` names that claim (1-based among the call's claims,
-- 0 when reserved; of several, the one whose window ends last, since a retry before then would
-- be refused again) with the seconds until its window ends (`retry_seconds`), one element per
-- call. `claim_windows`, one per claim, are the windows the claims were counted in, for the
-- settlement, and `claim_seconds_left` the time until they end.
--
-- A reserved claim may also take a lease (`c_lease`: at most this much more, granted in
-- `claim_leased`): units counted here now that the replica hands out to its next calls without
-- coming back, until the window ends (it returns what it does not use). A lease is at most a
-- sixteenth of what the limit has left, so near a limit leases are nothing and every call
-- counts here.
--
-- The rows are locked first, in key order (as `settle_quota` takes them), so that batches never
-- wait for each other both ways, and each is written once however many calls it counts.
CREATE FUNCTION reserve_quota(r_instance bigint[], r_grantee bigint[], s_row integer[],
                              s_slot smallint[], s_window timestamptz[], s_delta bigint[],
                              c_call integer[],
                              c_row integer[], c_slot smallint[], c_period smallint[],
                              c_limit bigint[], c_amount bigint[], c_lease bigint[],
                              OUT refused integer[], OUT retry_seconds double precision[],
                              OUT claim_windows timestamptz[], OUT claim_leased bigint[],
                              OUT claim_seconds_left double precision[])
LANGUAGE plpgsql AS $$
DECLARE
    t_now timestamptz := clock_timestamp();
    rows_n integer := coalesce(array_length(r_instance, 1), 0);
    n integer := coalesce(array_length(c_call, 1), 0);
    calls_n integer := coalesce(c_call[n], 0);
    -- The rows' slots, flattened: row r's slot s is element (r - 1) * 8 + s.
    slot_starts timestamptz[];
    slot_used bigint[];
    changed boolean[];
    found_starts timestamptz[];
    found_used bigint[];
    period_starts timestamptz[];
    c_first integer := 1;
    c_last integer;
    idx integer;
    worst integer;
    worst_end timestamptz;
    claim_end timestamptz;
BEGIN
    slot_starts := array_fill(NULL::timestamptz, ARRAY[rows_n * 8 + 1]);
    slot_used := array_fill(0::bigint, ARRAY[rows_n * 8 + 1]);
    changed := array_fill(false, ARRAY[rows_n + 1]);
    FOR r IN 1..rows_n LOOP
        LOOP
            SELECT c.window_starts, c.used INTO found_starts, found_used FROM quota_counters c
            WHERE c.instance_id = r_instance[r] AND c.grantee_id = r_grantee[r]
            FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO quota_counters (instance_id, grantee_id, window_starts, used)
            VALUES (r_instance[r], r_grantee[r], array_fill(t_now, ARRAY[8]),
                    array_fill(0::bigint, ARRAY[8]))
            ON CONFLICT DO NOTHING;
        END LOOP;
        FOR s IN 1..8 LOOP
            slot_starts[(r - 1) * 8 + s] := found_starts[s];
            slot_used[(r - 1) * 8 + s] := found_used[s];
        END LOOP;
    END LOOP;
    FOR i IN 1..coalesce(array_length(s_row, 1), 0) LOOP
        idx := (s_row[i] - 1) * 8 + s_slot[i];
        IF slot_starts[idx] = s_window[i] THEN
            slot_used[idx] := greatest(slot_used[idx] + s_delta[i], 0);
            changed[s_row[i]] := true;
        END IF;
    END LOOP;
    period_starts := ARRAY[quota_window_start(1::smallint, t_now),
                           quota_window_start(2::smallint, t_now),
                           quota_window_start(3::smallint, t_now),
                           quota_window_start(4::smallint, t_now)];
    refused := array_fill(0, ARRAY[calls_n]);
    retry_seconds := array_fill(0::float8, ARRAY[calls_n]);
    claim_windows := array_fill(NULL::timestamptz, ARRAY[n]);
    claim_leased := array_fill(0::bigint, ARRAY[n]);
    claim_seconds_left := array_fill(0::float8, ARRAY[n]);
    FOR i IN 1..n LOOP
        claim_windows[i] := period_starts[c_period[i]];
        claim_seconds_left[i] :=
            extract(epoch FROM quota_window_end(c_period[i], claim_windows[i]) - t_now)::float8;
        idx := (c_row[i] - 1) * 8 + c_slot[i];
        IF slot_starts[idx] IS DISTINCT FROM claim_windows[i] THEN
            slot_starts[idx] := claim_windows[i];
            slot_used[idx] := 0;
        END IF;
    END LOOP;
    -- The calls in order, each all or nothing.
    WHILE c_first <= n LOOP
        c_last := c_first;
        WHILE c_last < n AND c_call[c_last + 1] = c_call[c_first] LOOP
            c_last := c_last + 1;
        END LOOP;
        worst := 0;
        FOR i IN c_first..c_last LOOP
            idx := (c_row[i] - 1) * 8 + c_slot[i];
            IF slot_used[idx] + c_amount[i] > c_limit[i] THEN
                claim_end := quota_window_end(c_period[i], claim_windows[i]);
                IF worst = 0 OR claim_end > worst_end THEN
                    worst := i - c_first + 1;
                    worst_end := claim_end;
                END IF;
            END IF;
        END LOOP;
        IF worst = 0 THEN
            FOR i IN c_first..c_last LOOP
                idx := (c_row[i] - 1) * 8 + c_slot[i];
                -- A lease: up to c_lease more, at most a sixteenth of what is left after this
                -- call, so that near a limit every call comes here.
                claim_leased[i] := greatest(least(c_lease[i],
                    (c_limit[i] - slot_used[idx] - c_amount[i]) / 16), 0);
                slot_used[idx] := slot_used[idx] + c_amount[i] + claim_leased[i];
                changed[c_row[i]] := true;
            END LOOP;
        ELSE
            refused[c_call[c_first]] := worst;
            retry_seconds[c_call[c_first]] :=
                greatest(extract(epoch FROM worst_end - t_now)::float8, 0.001);
        END IF;
        c_first := c_last + 1;
    END LOOP;
    FOR r IN 1..rows_n LOOP
        IF changed[r] THEN
            UPDATE quota_counters c
            SET window_starts = slot_starts[(r - 1) * 8 + 1:r * 8],
                used = slot_used[(r - 1) * 8 + 1:r * 8]
            WHERE c.instance_id = r_instance[r] AND c.grantee_id = r_grantee[r];
        END IF;
    END LOOP;
END
$$;

-- Settles reservations (one array element per correction: the counter row, the slot, the
-- window it was reserved in and what the reservation was off by: minus the reservation for a
-- call that never reached the provider, reported minus estimated tokens for one that did). A
-- correction for a window that has since moved on is dropped. Rows in row_key order, as
-- `reserve_quota` takes them.
CREATE FUNCTION settle_quota(s_instance bigint[], s_grantee bigint[], s_slot smallint[],
                             s_window timestamptz[], s_delta bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    settle record;
BEGIN
    FOR settle IN
        SELECT instance_id, grantee_id, slot, window_start, sum(delta) AS delta
        FROM unnest(s_instance, s_grantee, s_slot, s_window, s_delta)
             AS s (instance_id, grantee_id, slot, window_start, delta)
        GROUP BY 1, 2, 3, 4
        HAVING sum(delta) <> 0
        ORDER BY 1, 2, 3, 4
    LOOP
        UPDATE quota_counters c SET used[settle.slot] = greatest(c.used[settle.slot] + settle.delta, 0)
        WHERE c.instance_id = settle.instance_id AND c.grantee_id = settle.grantee_id
          AND c.window_starts[settle.slot] = settle.window_start;
    END LOOP;
END
$$;

-- Daily (UTC) totals of the uses of instances (Embed, TestInstance): one row per day, instance,
-- subject (the user on whose behalf) and caller (that user, or the service account acting).
-- Kept by the statement that writes the uses' audit events (src/store/usage_events.rs), so the
-- two always agree. Keyed by names, as the audit trail is: a deleted instance's history stays.
CREATE TABLE usage_daily (
    day                    date   NOT NULL,
    instance               text   NOT NULL,
    -- The instance's owner handle: owners read the rows of their instances.
    instance_owner         text,
    subject                text   NOT NULL,
    caller                 text   NOT NULL,
    requests               bigint NOT NULL,
    succeeded              bigint NOT NULL,
    failed                 bigint NOT NULL,
    -- Tokens the provider reported, and those estimated where it reported none.
    input_tokens           bigint NOT NULL,
    input_tokens_estimated bigint NOT NULL,
    PRIMARY KEY (day, instance, subject, caller)
);
CREATE INDEX usage_daily_instance ON usage_daily (instance, day);
CREATE INDEX usage_daily_owner ON usage_daily (instance_owner, day);
CREATE INDEX usage_daily_subject ON usage_daily (subject, day);

-- The ledger starts with the uses already on the audit trail (their detail carries the counts:
-- `input_tokens=N` where the provider reported them).
INSERT INTO usage_daily (day, instance, instance_owner, subject, caller, requests, succeeded,
                         failed, input_tokens, input_tokens_estimated)
SELECT (time AT TIME ZONE 'UTC')::date, resource, min(resource_owner), coalesce(subject, caller),
       caller, count(*), count(*) FILTER (WHERE outcome = 'OK'),
       count(*) FILTER (WHERE outcome <> 'OK'),
       coalesce(sum(substring(detail FROM 'input_tokens=([0-9]+)')::bigint), 0), 0
FROM audit_events
WHERE method IN ('EmbeddingService/Embed', 'EmbeddingService/TestInstance')
  AND detail LIKE '%latency_ms=%'
GROUP BY 1, 2, 4, 5;
