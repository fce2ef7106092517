//! Lowering: DataFusion's optimized `LogicalPlan` of a view's `SELECT` to the operator graph
//! ([`Node`]), or an error naming the operator that cannot be maintained and why.

use crate::aggregate::{AggSpec, AggregateOp};
use crate::error::{unsupported, Result};
use crate::join::{JoinOp, Side};
use crate::node::Node;
use crate::topn::TopNOp;
use crate::zset::relax_nullability;
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use datafusion::common::{DFSchema, JoinType};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::{Expr, FetchType, LogicalPlan, SkipType, SortExpr, Volatility};
use datafusion::physical_expr::create_physical_expr;
use datafusion::physical_plan::PhysicalExpr;
#[allow(deprecated)] // its replacement, LoweredAggregateBuilder, is not public in DataFusion 55
use datafusion::physical_planner::create_aggregate_expr_and_maybe_filter;
use std::sync::Arc;

/// Lowers `plan` (optimized) to a node graph.
pub(crate) fn lower(plan: &LogicalPlan, props: &ExecutionProps) -> Result<Node> {
    Lowering { props }.node(plan)
}

struct Lowering<'a> {
    props: &'a ExecutionProps,
}

fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    relax_nullability(&Arc::new(schema.as_arrow().clone()))
}

/// Refuses expressions whose value is not a function of the row: volatile functions (`random()`),
/// and subqueries DataFusion did not turn into joins.
fn check_expr(operator: &str, e: &Expr) -> Result<()> {
    let mut bad: Option<String> = None;
    e.apply(|x| {
        match x {
            Expr::ScalarFunction(f) if f.func.signature().volatility == Volatility::Volatile => {
                bad = Some(format!("{}() is not deterministic", f.func.name()));
            }
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::OuterReferenceColumn(..) => {
                bad = Some(format!("a subquery DataFusion could not turn into a join: {x}"));
            }
            _ => {}
        }
        Ok(if bad.is_some() {
            datafusion::common::tree_node::TreeNodeRecursion::Stop
        } else {
            datafusion::common::tree_node::TreeNodeRecursion::Continue
        })
    })?;
    match bad {
        Some(reason) => Err(unsupported(operator, reason)),
        None => Ok(()),
    }
}

use datafusion::common::tree_node::TreeNode;

impl Lowering<'_> {
    fn expr(&self, operator: &str, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        check_expr(operator, e)?;
        Ok(create_physical_expr(e, schema, self.props, &PhysicalPlanningContext::default())?)
    }

    fn sort(&self, exprs: &[SortExpr], schema: &DFSchema) -> Result<Vec<(Arc<dyn PhysicalExpr>, SortOptions)>> {
        exprs
            .iter()
            .map(|s| {
                Ok((
                    self.expr("Sort", &s.expr, schema)?,
                    SortOptions { descending: !s.asc, nulls_first: s.nulls_first },
                ))
            })
            .collect()
    }

    fn node(&self, plan: &LogicalPlan) -> Result<Node> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(unsupported("TableScan", "a scan with a row limit"));
                }
                let source = scan.source.schema();
                let full = DFSchema::try_from_qualified_schema(scan.table_name.clone(), &source)?;
                let filters =
                    scan.filters.iter().map(|f| self.expr("TableScan", f, &full)).collect::<Result<Vec<_>>>()?;
                Ok(Node::Scan {
                    table: scan.table_name.table().to_string(),
                    filters,
                    projection: scan.projection.clone(),
                    schema: arrow_schema(&scan.projected_schema),
                })
            }
            LogicalPlan::Values(v) => Ok(Node::Constant { schema: arrow_schema(&v.schema) }),
            LogicalPlan::EmptyRelation(e) => Ok(Node::Constant { schema: arrow_schema(&e.schema) }),
            LogicalPlan::Filter(f) => Ok(Node::Filter {
                predicate: self.expr("Filter", &f.predicate, f.input.schema())?,
                input: Box::new(self.node(&f.input)?),
                schema: arrow_schema(f.input.schema()),
            }),
            LogicalPlan::Projection(p) => Ok(Node::Project {
                exprs: p.expr.iter().map(|e| self.expr("Projection", e, p.input.schema())).collect::<Result<_>>()?,
                input: Box::new(self.node(&p.input)?),
                schema: arrow_schema(&p.schema),
            }),
            LogicalPlan::SubqueryAlias(a) => Ok(Node::Rename {
                input: Box::new(self.node(&a.input)?),
                schema: arrow_schema(&a.schema),
                what: "SubqueryAlias",
            }),
            LogicalPlan::Sort(s) => match s.fetch {
                None => Ok(Node::Rename {
                    input: Box::new(self.node(&s.input)?),
                    schema: arrow_schema(s.input.schema()),
                    what: "Sort without a limit: a view is a multiset, its sinks order nothing",
                }),
                Some(fetch) => self.top_n(s, 0, fetch),
            },
            LogicalPlan::Limit(l) => {
                let skip = match l.get_skip_type()? {
                    SkipType::Literal(n) => n,
                    SkipType::UnsupportedExpr => return Err(unsupported("Limit", "an OFFSET that is not a constant")),
                };
                let fetch = match l.get_fetch_type()? {
                    FetchType::Literal(n) => n,
                    FetchType::UnsupportedExpr => return Err(unsupported("Limit", "a LIMIT that is not a constant")),
                };
                match (l.input.as_ref(), fetch) {
                    (LogicalPlan::Sort(s), Some(fetch)) => self.top_n(s, skip, fetch),
                    (LogicalPlan::Sort(s), None) if s.fetch.is_none() && skip > 0 => {
                        self.top_n(s, skip, usize::MAX - skip)
                    }
                    _ => Err(unsupported("Limit", "LIMIT or OFFSET without ORDER BY picks arbitrary rows")),
                }
            }
            LogicalPlan::Union(u) => {
                let inputs = u.inputs.iter().map(|i| self.node(i)).collect::<Result<Vec<_>>>()?;
                Ok(Node::Union { inputs, schema: arrow_schema(&u.schema) })
            }
            LogicalPlan::Join(j) => {
                if j.null_aware {
                    let nullable = j.on.iter().any(|(l, r)| {
                        l.nullable(j.left.schema()).unwrap_or(true) || r.nullable(j.right.schema()).unwrap_or(true)
                    });
                    if nullable {
                        return Err(unsupported(
                            "Join",
                            "NOT IN over a column that may be NULL (a null-aware anti join)",
                        ));
                    }
                }
                let left_keys =
                    j.on.iter().map(|(l, _)| self.expr("Join", l, j.left.schema())).collect::<Result<Vec<_>>>()?;
                let right_keys =
                    j.on.iter().map(|(_, r)| self.expr("Join", r, j.right.schema())).collect::<Result<Vec<_>>>()?;
                let pair_schema = j.left.schema().join(j.right.schema())?;
                let filter = j.filter.as_ref().map(|f| self.expr("Join", f, &pair_schema)).transpose()?;
                let left = Side::new(self.node(&j.left)?, j.left.as_ref().clone(), left_keys)?;
                let right = Side::new(self.node(&j.right)?, j.right.as_ref().clone(), right_keys)?;
                if matches!(j.join_type, JoinType::RightMark) {
                    return Err(unsupported("Join", "a right mark join"));
                }
                Ok(Node::Join(Box::new(JoinOp::new(
                    left,
                    right,
                    j.join_type,
                    j.null_equality,
                    filter,
                    arrow_schema(&j.schema),
                )?)))
            }
            LogicalPlan::Aggregate(a) => {
                if a.group_expr.iter().any(|g| matches!(g, Expr::GroupingSet(_))) {
                    return Err(unsupported("Aggregate", "GROUPING SETS, ROLLUP and CUBE"));
                }
                let input_schema = a.input.schema();
                let groups =
                    a.group_expr.iter().map(|g| self.expr("Aggregate", g, input_schema)).collect::<Result<Vec<_>>>()?;
                let physical = input_schema.as_arrow();
                let input = self.node(&a.input)?;
                let node_schema = input.schema();
                let mut aggs = Vec::new();
                for e in &a.aggr_expr {
                    check_expr("Aggregate", e)?;
                    #[allow(deprecated)]
                    let (func, filter, _) =
                        create_aggregate_expr_and_maybe_filter(e, input_schema, physical, self.props)?;
                    aggs.push(AggSpec::new(func, filter, &node_schema)?);
                }
                Ok(Node::Aggregate(Box::new(AggregateOp::new(
                    input,
                    a.input.as_ref().clone(),
                    groups,
                    aggs,
                    arrow_schema(&a.schema),
                )?)))
            }
            LogicalPlan::Window(_) => Err(unsupported("Window", "window functions are not maintained yet")),
            LogicalPlan::Distinct(_) => Err(unsupported("Distinct", "DISTINCT ON")),
            LogicalPlan::Unnest(_) => Err(unsupported("Unnest", "UNNEST is not maintained yet")),
            LogicalPlan::RecursiveQuery(_) => {
                Err(unsupported("RecursiveQuery", "recursive queries are not maintained"))
            }
            other => Err(unsupported(other.display().to_string(), "not a query operator that can be maintained")),
        }
    }

    fn top_n(&self, s: &datafusion::logical_expr::Sort, skip: usize, fetch: usize) -> Result<Node> {
        let sort = self.sort(&s.expr, s.input.schema())?;
        let input = self.node(&s.input)?;
        Ok(Node::TopN(Box::new(TopNOp::new(input, s.input.as_ref().clone(), sort, skip, fetch)?)))
    }
}

/// The sort of `plan`'s outermost `ORDER BY` (under a `LIMIT`), as expressions over the view's
/// rows; empty when the outermost operator is something else.
pub(crate) fn output_order(
    plan: &LogicalPlan,
    props: &ExecutionProps,
) -> Result<Vec<(Arc<dyn PhysicalExpr>, SortOptions)>> {
    let sort = match plan {
        LogicalPlan::Sort(s) => s,
        LogicalPlan::Limit(l) => match l.input.as_ref() {
            LogicalPlan::Sort(s) => s,
            _ => return Ok(Vec::new()),
        },
        _ => return Ok(Vec::new()),
    };
    Lowering { props }.sort(&sort.expr, sort.input.schema())
}
