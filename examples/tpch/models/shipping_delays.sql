-- Days from shipping to receipt, by ship month and return flag.
SELECT
    date_trunc('month', l_shipdate) AS ship_month,
    l_returnflag,
    count(*) AS lines,
    avg(l_receiptdate - l_shipdate) AS avg_days_in_transit,
    sum(CASE WHEN l_receiptdate > l_shipdate + INTERVAL '21 days' THEN 1 ELSE 0 END) AS late_lines
FROM order_lines
GROUP BY 1, 2
ORDER BY 1, 2
