-- Quotas on shares, budgets on instances, their counters, and the daily usage ledger.
--
-- A quota is a JSON array of limits, `[{"metric": "requests", "period": "minute", "limit": 10}]`
-- (metric `requests` or `input_tokens`; period `minute`, `hour`, `day` or `month`, calendar
-- windows in UTC). NULL: no limit. `shares.quota` limits one grantee's calls (and those of a
-- service account acting for them); `instances.quota` is a budget over every caller.
ALTER TABLE instances ADD COLUMN quota jsonb CHECK (jsonb_typeof(quota) = 'array');
ALTER TABLE shares ADD COLUMN quota jsonb CHECK (jsonb_typeof(quota) = 'array');

-- What each limit has counted in its current window. One row per instance, scope, metric and
-- period that was ever checked; the window moves forward in place. `grantee_id` 0 is the
-- instance's budget, any other value the share quota of that user. Metrics and periods are the
-- numbers of the proto enums (1 requests, 2 input tokens; 1 minute, 2 hour, 3 day, 4 month).
CREATE TABLE quota_counters (
    instance_id  bigint      NOT NULL REFERENCES instances (id) ON DELETE CASCADE,
    grantee_id   bigint      NOT NULL,
    metric       smallint    NOT NULL CHECK (metric BETWEEN 1 AND 2),
    period       smallint    NOT NULL CHECK (period BETWEEN 1 AND 4),
    window_start timestamptz NOT NULL,
    used         bigint      NOT NULL,
    PRIMARY KEY (instance_id, grantee_id, metric, period)
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

-- Reserves one call against every limit given (arrays of one element per limit, sorted by
-- grantee, metric, period: rows are locked in that order by every writer, so two writers never
-- wait for each other both ways). Either every counter takes its amount, or none does: when one
-- would pass its limit, nothing is written and the answer names it (1-based `refused`, 0 when
-- reserved) with the seconds until its window ends (the latest end among those exceeded, since
-- a retry before that would be refused again). `window_starts` are the windows reserved in, for
-- the settlement.
CREATE FUNCTION reserve_quota(p_instance bigint, p_grantees bigint[], p_metrics smallint[],
                              p_periods smallint[], p_limits bigint[], p_amounts bigint[])
RETURNS TABLE (refused integer, retry_seconds double precision, window_starts timestamptz[])
LANGUAGE plpgsql AS $$
DECLARE
    t_now timestamptz := clock_timestamp();
    n integer := coalesce(array_length(p_grantees, 1), 0);
    starts timestamptz[] := '{}';
    current_used bigint[] := '{}';
    found_start timestamptz;
    found_used bigint;
    w_start timestamptz;
    worst integer := 0;
    worst_end timestamptz;
BEGIN
    FOR i IN 1..n LOOP
        w_start := quota_window_start(p_periods[i], t_now);
        LOOP
            SELECT c.window_start, c.used INTO found_start, found_used FROM quota_counters c
            WHERE c.instance_id = p_instance AND c.grantee_id = p_grantees[i]
              AND c.metric = p_metrics[i] AND c.period = p_periods[i]
            FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO quota_counters (instance_id, grantee_id, metric, period, window_start, used)
            VALUES (p_instance, p_grantees[i], p_metrics[i], p_periods[i], w_start, 0)
            ON CONFLICT DO NOTHING;
        END LOOP;
        IF found_start <> w_start THEN
            found_used := 0;
        END IF;
        starts := starts || w_start;
        current_used := current_used || found_used;
        IF found_used + p_amounts[i] > p_limits[i]
           AND (worst = 0 OR quota_window_end(p_periods[i], w_start) > worst_end) THEN
            worst := i;
            worst_end := quota_window_end(p_periods[i], w_start);
        END IF;
    END LOOP;
    IF worst > 0 THEN
        RETURN QUERY SELECT worst, greatest(extract(epoch FROM worst_end - t_now)::float8, 0.001),
                            starts;
        RETURN;
    END IF;
    FOR i IN 1..n LOOP
        UPDATE quota_counters c SET window_start = starts[i], used = current_used[i] + p_amounts[i]
        WHERE c.instance_id = p_instance AND c.grantee_id = p_grantees[i]
          AND c.metric = p_metrics[i] AND c.period = p_periods[i];
    END LOOP;
    RETURN QUERY SELECT 0, 0::float8, starts;
END
$$;

-- Daily (UTC) totals of the uses of instances (Embed, TestInstance): one row per day, instance,
-- subject (the user on whose behalf) and caller (that user, or the service account acting).
-- Kept by `record_uses`, in the statement that writes the uses' audit events, so the two always
-- agree. Keyed by names, as the audit trail is: a deleted instance's history stays.
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

-- Writes uses: their audit events and their daily totals in one statement (every event at the
-- same time, so that its day is the totals' day), after settling their quota reservations
-- (`e_usage_subject` NULL: an event on the trail only, such as a key's release; `s_*`: one
-- element per counter; `s_delta` is what the call's reservation was off by: minus
-- the reservation for a call that never reached the provider, reported minus estimated tokens
-- for one that did). Locks: counters in key order first (as `reserve_quota` takes them), then
-- the daily rows in key order, so that writers of uses never wait for each other both ways.
CREATE FUNCTION record_uses(
    e_caller text[], e_subject text[], e_method text[], e_resource text[], e_owner text[],
    e_outcome text[], e_detail text[], e_usage_subject text[], e_tokens bigint[],
    e_estimated bigint[],
    s_instance bigint[], s_grantee bigint[], s_metric smallint[], s_period smallint[],
    s_window timestamptz[], s_delta bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t_now timestamptz := clock_timestamp();
    settle record;
BEGIN
    FOR settle IN
        SELECT instance_id, grantee_id, metric, period, window_start, sum(delta) AS delta
        FROM unnest(s_instance, s_grantee, s_metric, s_period, s_window, s_delta)
             AS s (instance_id, grantee_id, metric, period, window_start, delta)
        GROUP BY 1, 2, 3, 4, 5
        HAVING sum(delta) <> 0
        ORDER BY 1, 2, 3, 4, 5
    LOOP
        UPDATE quota_counters c SET used = greatest(c.used + settle.delta, 0)
        WHERE c.instance_id = settle.instance_id AND c.grantee_id = settle.grantee_id
          AND c.metric = settle.metric AND c.period = settle.period
          AND c.window_start = settle.window_start;
    END LOOP;
    INSERT INTO usage_daily AS u (day, instance, instance_owner, subject, caller, requests,
                                  succeeded, failed, input_tokens, input_tokens_estimated)
    SELECT (t_now AT TIME ZONE 'UTC')::date, resource, min(owner), usage_subject, caller, count(*),
           count(*) FILTER (WHERE outcome = 'OK'), count(*) FILTER (WHERE outcome <> 'OK'),
           sum(tokens), sum(estimated)
    FROM unnest(e_resource, e_owner, e_usage_subject, e_caller, e_outcome, e_tokens, e_estimated)
         AS e (resource, owner, usage_subject, caller, outcome, tokens, estimated)
    WHERE usage_subject IS NOT NULL
    GROUP BY resource, usage_subject, caller
    ORDER BY resource, usage_subject, caller
    ON CONFLICT (day, instance, subject, caller) DO UPDATE SET
        requests = u.requests + EXCLUDED.requests,
        succeeded = u.succeeded + EXCLUDED.succeeded,
        failed = u.failed + EXCLUDED.failed,
        input_tokens = u.input_tokens + EXCLUDED.input_tokens,
        input_tokens_estimated = u.input_tokens_estimated + EXCLUDED.input_tokens_estimated;
    INSERT INTO audit_events (time, caller, method, resource, resource_owner, outcome, detail,
                              subject)
    SELECT t_now, * FROM unnest(e_caller, e_method, e_resource, e_owner, e_outcome, e_detail,
                             e_subject);
END
$$;

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
