-- One row per customer in customer_revenue.
-- spillway: check profile=S
SELECT o_custkey, count(*) AS copies
FROM customer_revenue
GROUP BY o_custkey
HAVING count(*) > 1
