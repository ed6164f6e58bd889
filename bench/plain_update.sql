-- PostgreSQL's plain single-row UPDATE on pgbench's own table (the floor any UpdateInstance is
-- compared with). Run by bench/run.sh on a `pgbench -i -s 10` database.
\set aid random(1, 1000000)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;
