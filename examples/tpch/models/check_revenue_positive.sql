-- No nation-month with zero or negative revenue.
-- spillway: check profile=S
SELECT region, nation, order_month, revenue
FROM revenue_by_nation_month
WHERE revenue <= 0
