-- Every lineitem made it into order_lines (a check passes when it returns no rows).
-- spillway: check profile=S
SELECT a.n AS order_lines, b.n AS lineitems
FROM (SELECT count(*) AS n FROM order_lines) a
CROSS JOIN (SELECT count(*) AS n FROM lineitem) b
WHERE a.n <> b.n
