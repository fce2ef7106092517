//! Uncorrelated scalar subqueries (`WHERE x > (SELECT avg(y) FROM t)`, TPC-H Q11, Q15, Q22):
//! DataFusion 55 keeps them as subqueries (run once by `ScalarSubqueryExec`). A view cannot: the
//! subquery's value changes with its table. Before lowering, each one becomes a join of its
//! operator's input with the subquery's row, and the subquery expression a column of that row.
//! An ungrouped aggregate has exactly one row: an inner cross join (maintained by the bilinear
//! rule). Any other subquery has at most one: a left join, so that no row gives NULL.

use crate::error::Result;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use std::sync::atomic::{AtomicUsize, Ordering};

fn is_uncorrelated_scalar(e: &Expr) -> bool {
    matches!(e, Expr::ScalarSubquery(s) if s.outer_ref_columns.is_empty())
}

fn has_scalar(e: &Expr) -> bool {
    e.exists(|x| Ok(is_uncorrelated_scalar(x))).unwrap_or(false)
}

fn one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::Projection(p) => one_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => one_row(&a.input),
        _ => false,
    }
}

/// Joins `input` with every uncorrelated scalar subquery of `exprs`, which refer to it by column
/// afterwards.
fn attach(mut input: LogicalPlan, exprs: Vec<Expr>, counter: &AtomicUsize) -> Result<(LogicalPlan, Vec<Expr>)> {
    let mut out = Vec::with_capacity(exprs.len());
    for e in exprs {
        let name = e.schema_name().to_string();
        let was_alias = matches!(e, Expr::Alias(_));
        let rewritten = e.transform_up(|x| {
            if !is_uncorrelated_scalar(&x) {
                return Ok(Transformed::no(x));
            }
            let Expr::ScalarSubquery(s) = x else { unreachable!("checked above") };
            let alias = format!("__scalar_{}", counter.fetch_add(1, Ordering::Relaxed));
            let sub = LogicalPlanBuilder::from(s.subquery.as_ref().clone()).alias(alias.as_str())?.build()?;
            let field = sub.schema().field(0).name().clone();
            let joined = if one_row(&s.subquery) {
                LogicalPlanBuilder::from(input.clone()).cross_join(sub)?.build()?
            } else {
                LogicalPlanBuilder::from(input.clone()).join_on(sub, JoinType::Left, Vec::<Expr>::new())?.build()?
            };
            input = joined;
            Ok(Transformed::yes(Expr::Column(Column::new(Some(alias), field))))
        })?;
        let e = rewritten.data;
        out.push(if rewritten.transformed && !was_alias { e.alias(name) } else { e });
    }
    Ok((input, out))
}

/// `plan` with every uncorrelated scalar subquery of a filter or projection joined in. One that
/// is not an ungrouped aggregate could return several rows, where SQL raises an error and a join
/// would repeat the outer rows: refused.
pub(crate) fn join_scalar_subqueries(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut several = false;
    plan.apply(|node| {
        for e in node.expressions() {
            e.apply(|x| {
                if let Expr::ScalarSubquery(s) = x {
                    several |= s.outer_ref_columns.is_empty() && !one_row(&s.subquery);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if several {
        return Err(crate::error::unsupported(
            "Subquery",
            "a scalar subquery that may return several rows (not an ungrouped aggregate): SQL raises an error when \
             it does; write it with max(...) or min(...), or as a join",
        ));
    }
    let counter = AtomicUsize::new(0);
    let out = plan.transform_up(|node| match &node {
        LogicalPlan::Filter(f) if has_scalar(&f.predicate) => {
            let columns: Vec<Expr> = f.input.schema().columns().into_iter().map(Expr::Column).collect();
            let (input, mut pred) = attach(f.input.as_ref().clone(), vec![f.predicate.clone()], &counter)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let pred = pred.remove(0).unalias();
            let plan = LogicalPlanBuilder::from(input).filter(pred)?.project(columns)?.build()?;
            Ok(Transformed::yes(plan))
        }
        LogicalPlan::Projection(p) if p.expr.iter().any(has_scalar) => {
            let (input, exprs) = attach(p.input.as_ref().clone(), p.expr.clone(), &counter)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            Ok(Transformed::yes(LogicalPlanBuilder::from(input).project(exprs)?.build()?))
        }
        _ => Ok(Transformed::no(node)),
    })?;
    Ok(out.data)
}

/// Whether any filter or projection of `plan` holds an uncorrelated scalar subquery.
pub(crate) fn has_scalar_subquery(plan: &LogicalPlan) -> bool {
    plan.exists(|p| Ok(p.expressions().iter().any(has_scalar))).unwrap_or(false)
}
