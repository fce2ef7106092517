//! Join order for state: inner joins rewritten so that relations that never change and filter
//! are joined as early as their join conditions allow, and those that only look up, last.
//!
//! DataFusion keeps the order the query was written in (`FROM supplier, lineitem, orders,
//! nation`), which costs a batch query nothing, but costs a view state: every join of two
//! changing inputs keeps both, so a filter that arrives late through an unchanging dimension
//! (`n_name = 'SAUDI ARABIA'` in TPC-H Q21, joined last) leaves every join below it keeping rows
//! the view will never use. A join beside an unchanging side keeps only that side (see
//! `join.rs`), so joining the unchanging relations first costs their rows alone and shrinks
//! every input above them.
//!
//! The rewrite takes each maximal tree of inner equi-joins (through the column-only
//! projections and the filters between them), its leaves in the written order, and:
//! - groups the unchanging leaves connected by join conditions into components (joined among
//!   themselves they keep nothing: neither side changes);
//! - places the changing leaves in their written order, and each unchanging component that
//!   filters (a filter, a pushed-down one, a semi or anti join in it, or a condition between
//!   its own leaves) right after the last changing leaf it has a join condition with; the
//!   components that only look up (a dimension joined for its columns) go last, so that their
//!   columns are not carried through the joins of changing inputs;
//! - puts each condition at the first join that has both of its sides, each one-leaf predicate
//!   on its leaf, and after each join keeps only the columns still needed above.
//!
//! It assumes what star and snowflake schemas give: an unchanging dimension is joined on its
//! key, so joining it earlier filters or keeps rows, never multiplies them. A tree it cannot
//! rebuild exactly (a column it cannot place, a join that would lose all its keys, a
//! null-equal key) keeps its written order.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Result;
use datafusion::common::{Column, DFSchemaRef, JoinConstraint, JoinType, NullEquality};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, Filter, Join, LogicalPlan, Projection};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// `plan` with its inner-join trees reordered for state, or `None` when no tree changes.
pub(crate) fn reorder(plan: &LogicalPlan, fixed: &BTreeSet<String>) -> crate::error::Result<Option<LogicalPlan>> {
    if fixed.is_empty() {
        return Ok(None);
    }
    let mut changed = false;
    let plan = rewrite(plan, fixed, &mut changed)?;
    Ok(changed.then_some(plan))
}

fn rewrite(plan: &LogicalPlan, fixed: &BTreeSet<String>, changed: &mut bool) -> Result<LogicalPlan> {
    if region_join(plan) {
        let mut region = Region::default();
        region.flatten(plan, fixed, changed)?;
        if let Some(new) = region.rebuild(plan.schema(), fixed)? {
            *changed = true;
            return Ok(new);
        }
    }
    Ok(plan.clone().map_children(|c| Ok(Transformed::yes(rewrite(&c, fixed, changed)?)))?.data)
}

/// An inner equi-join the rewrite may move: `ON` keys that never match NULL.
fn region_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join(j) if j.join_type == JoinType::Inner
        && j.null_equality == NullEquality::NullEqualsNothing
        && !j.null_aware)
}

/// Whether `plan` belongs to the tree above its leaves: a region join, or a column-only
/// projection or a filter over one.
fn inside(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => p.expr.iter().all(|e| matches!(e, Expr::Column(_))) && inside(&p.input),
        LogicalPlan::Filter(f) => inside(&f.input),
        other => region_join(other),
    }
}

/// One tree of inner joins taken apart.
#[derive(Default)]
struct Region {
    /// The leaves, in the written order (left to right), each already rewritten inside.
    leaves: Vec<LogicalPlan>,
    /// The `ON` pairs.
    keys: Vec<(Expr, Expr)>,
    /// The join filters' and the filters' conjuncts.
    predicates: Vec<Expr>,
}

impl Region {
    fn flatten(&mut self, plan: &LogicalPlan, fixed: &BTreeSet<String>, changed: &mut bool) -> Result<()> {
        match plan {
            LogicalPlan::Join(j) if region_join(plan) => {
                self.keys.extend(j.on.iter().cloned());
                if let Some(f) = &j.filter {
                    self.predicates.extend(split_conjunction(f).into_iter().cloned());
                }
                self.flatten(&j.left, fixed, changed)?;
                self.flatten(&j.right, fixed, changed)
            }
            LogicalPlan::Projection(p) if inside(plan) => self.flatten(&p.input, fixed, changed),
            LogicalPlan::Filter(f) if inside(plan) => {
                self.predicates.extend(split_conjunction(&f.predicate).into_iter().cloned());
                self.flatten(&f.input, fixed, changed)
            }
            leaf => {
                self.leaves.push(rewrite(leaf, fixed, changed)?);
                Ok(())
            }
        }
    }

    /// The leaves an expression reads, or `None` when a column is in none or several.
    fn leaves_of(&self, e: &Expr) -> Option<BTreeSet<usize>> {
        let mut out = BTreeSet::new();
        for c in e.column_refs() {
            let mut found = self.leaves.iter().enumerate().filter(|(_, l)| l.schema().has_column(c));
            let (i, _) = found.next()?;
            if found.next().is_some() {
                return None;
            }
            out.insert(i);
        }
        Some(out)
    }

    /// The reordered tree with `schema` (the top join's), or `None` to keep the written one.
    fn rebuild(mut self, schema: &DFSchemaRef, fixed: &BTreeSet<String>) -> Result<Option<LogicalPlan>> {
        let n = self.leaves.len();
        let unchanging: Vec<bool> = self.leaves.iter().map(|l| never_changes(l, fixed)).collect();
        if !unchanging.iter().any(|u| *u) || unchanging.iter().all(|u| *u) {
            return Ok(None);
        }
        // Keys between two single leaves are edges; any other key is a predicate `l = r`.
        let mut edges: Vec<(usize, Expr, usize, Expr)> = Vec::new();
        for (l, r) in std::mem::take(&mut self.keys) {
            let (Some(a), Some(b)) = (self.leaves_of(&l), self.leaves_of(&r)) else { return Ok(None) };
            match (a.iter().next(), b.iter().next()) {
                (Some(&x), Some(&y)) if a.len() == 1 && b.len() == 1 && x != y => edges.push((x, l, y, r)),
                _ => self.predicates.push(l.eq(r)),
            }
        }
        let mut predicates = Vec::new();
        for p in std::mem::take(&mut self.predicates) {
            let Some(on) = self.leaves_of(&p) else { return Ok(None) };
            predicates.push((on, p));
        }

        // Components of unchanging leaves, and the changing leaves each has a key with.
        let mut component: Vec<usize> = (0..n).collect();
        fn root(c: &mut [usize], mut i: usize) -> usize {
            while c[i] != i {
                c[i] = c[c[i]];
                i = c[i];
            }
            i
        }
        for (a, _, b, _) in &edges {
            if unchanging[*a] && unchanging[*b] {
                let (ra, rb) = (root(&mut component, *a), root(&mut component, *b));
                component[ra.max(rb)] = ra.min(rb);
            }
        }
        let mut units: Vec<(Vec<usize>, BTreeSet<usize>)> = Vec::new(); // (leaves, changing leaves keyed)
        for i in (0..n).filter(|i| unchanging[*i]) {
            let r = root(&mut component, i);
            let needs: BTreeSet<usize> = edges
                .iter()
                .filter_map(|(a, _, b, _)| {
                    let (a, b) = (*a, *b);
                    if unchanging[a] && !unchanging[b] && root(&mut component, a) == r {
                        Some(b)
                    } else if unchanging[b] && !unchanging[a] && root(&mut component, b) == r {
                        Some(a)
                    } else {
                        None
                    }
                })
                .collect();
            match units.iter_mut().find(|(ls, _)| root(&mut component, ls[0]) == r) {
                Some(u) => u.0.push(i),
                None => units.push((vec![i], needs)),
            }
        }

        // The new order: changing leaves as written, each component that filters right after
        // the last changing leaf it has a key with; the components that only look up (nothing
        // filters them) last, so that their columns are not carried through the joins.
        let filters = |ls: &[usize]| {
            ls.iter().any(|&i| has_filter(&self.leaves[i]))
                || predicates.iter().any(|(on, _)| !on.is_empty() && on.iter().all(|i| ls.contains(i)))
        };
        let (mut pending, lookups): (Vec<_>, Vec<_>) = units.into_iter().partition(|(ls, _)| filters(ls));
        let mut order: Vec<Vec<usize>> = Vec::new();
        let mut placed = BTreeSet::new();
        for i in (0..n).filter(|i| !unchanging[*i]) {
            order.push(vec![i]);
            placed.insert(i);
            let (ready, rest): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|(_, needs)| !needs.is_empty() && needs.is_subset(&placed));
            order.extend(ready.into_iter().map(|(ls, _)| ls));
            pending = rest;
        }
        pending.extend(lookups);
        pending.sort_by_key(|(ls, _)| ls[0]);
        order.extend(pending.into_iter().map(|(ls, _)| ls));
        let flat: Vec<usize> = order.iter().flatten().copied().collect();
        if flat.iter().copied().eq(0..n) {
            return Ok(None);
        }

        // Build: one-leaf predicates on their leaves, each component as a tree of its own (its
        // joins keep nothing), then the units left-deep in the new order.
        let mut leaves: Vec<Option<LogicalPlan>> = Vec::new();
        for (i, leaf) in std::mem::take(&mut self.leaves).into_iter().enumerate() {
            let own: Vec<Expr> =
                predicates.iter().filter(|(on, _)| on.len() == 1 && on.contains(&i)).map(|(_, p)| p.clone()).collect();
            leaves.push(Some(match conjunction(own) {
                Some(p) => LogicalPlan::Filter(Filter::try_new(p, Arc::new(leaf))?),
                None => leaf,
            }));
        }
        predicates.retain(|(on, _)| on.len() != 1);
        let mut b = Builder {
            used: vec![false; edges.len()],
            edges,
            done: vec![false; predicates.len()],
            predicates,
            output: schema.columns(),
        };
        let mut acc: Option<(LogicalPlan, BTreeSet<usize>)> = None;
        for unit in order {
            let Some(unit) = b.unit(&unit, &mut leaves)? else { return Ok(None) };
            acc = match acc {
                None => Some(unit),
                Some(left) => match b.join(left, unit)? {
                    Some(j) => Some(j),
                    None => return Ok(None),
                },
            };
        }
        let Some((mut plan, _)) = acc else { return Ok(None) };
        if b.used.iter().any(|u| !u) {
            return Ok(None);
        }
        let rest: Vec<Expr> =
            b.predicates.iter().zip(&b.done).filter(|(_, d)| !**d).map(|((_, p), _)| p.clone()).collect();
        if let Some(p) = conjunction(rest) {
            plan = LogicalPlan::Filter(Filter::try_new(p, Arc::new(plan))?);
        }
        let top = Projection::try_new(b.output.into_iter().map(Expr::Column).collect(), Arc::new(plan))?;
        Ok(Some(LogicalPlan::Projection(top)))
    }
}

/// Rebuilds joins from a region's parts, marking the keys and predicates it has placed.
struct Builder {
    /// `(leaf, its key expression, leaf, its key expression)`.
    edges: Vec<(usize, Expr, usize, Expr)>,
    used: Vec<bool>,
    /// Predicates over two leaves or more, with the leaves they read.
    predicates: Vec<(BTreeSet<usize>, Expr)>,
    done: Vec<bool>,
    /// The region's output columns.
    output: Vec<Column>,
}

type Part = (LogicalPlan, BTreeSet<usize>);

impl Builder {
    /// The leaves of one unit joined (each next one that has a key with those before it), or
    /// `None` when one has none.
    fn unit(&mut self, unit: &[usize], leaves: &mut [Option<LogicalPlan>]) -> Result<Option<Part>> {
        let take = |leaves: &mut [Option<LogicalPlan>], i: usize| {
            (leaves[i].take().expect("each leaf is placed once"), BTreeSet::from([i]))
        };
        let mut acc = take(leaves, unit[0]);
        let mut rest: Vec<usize> = unit[1..].to_vec();
        while !rest.is_empty() {
            let next = rest.iter().position(|&i| {
                self.edges.iter().any(|(a, _, b, _)| (acc.1.contains(a) && *b == i) || (acc.1.contains(b) && *a == i))
            });
            let Some(k) = next else { return Ok(None) };
            let i = rest.remove(k);
            let right = take(leaves, i);
            match self.join(acc, right)? {
                Some(j) => acc = j,
                None => return Ok(None),
            }
        }
        Ok(Some(acc))
    }

    /// `left ⋈ right` on every key between them, with the predicates they now cover, then only
    /// the columns still read above; `None` when no key joins them.
    fn join(&mut self, (left, lset): Part, (right, rset): Part) -> Result<Option<Part>> {
        let mut on = Vec::new();
        for (k, (a, l, b, r)) in self.edges.iter().enumerate() {
            if lset.contains(a) && rset.contains(b) {
                on.push((l.clone(), r.clone()));
            } else if lset.contains(b) && rset.contains(a) {
                on.push((r.clone(), l.clone()));
            } else {
                continue;
            }
            self.used[k] = true;
        }
        if on.is_empty() {
            return Ok(None); // a cross join the written order did not have
        }
        let set: BTreeSet<usize> = lset.union(&rset).copied().collect();
        let mut filter = Vec::new();
        for (k, (on, p)) in self.predicates.iter().enumerate() {
            if !self.done[k] && on.is_subset(&set) {
                self.done[k] = true;
                filter.push(p.clone());
            }
        }
        let join = LogicalPlan::Join(Join::try_new(
            Arc::new(left),
            Arc::new(right),
            on,
            conjunction(filter),
            JoinType::Inner,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?);
        let mut needed: HashSet<&Column> = self.output.iter().collect();
        for ((_, l, _, r), _) in self.edges.iter().zip(&self.used).filter(|(_, u)| !**u) {
            needed.extend(l.column_refs());
            needed.extend(r.column_refs());
        }
        for ((_, p), _) in self.predicates.iter().zip(&self.done).filter(|(_, d)| !**d) {
            needed.extend(p.column_refs());
        }
        let columns = join.schema().columns();
        let keep: Vec<Expr> = columns.iter().filter(|c| needed.contains(c)).cloned().map(Expr::Column).collect();
        let plan = if keep.is_empty() || keep.len() == columns.len() {
            join
        } else {
            LogicalPlan::Projection(Projection::try_new(keep, Arc::new(join))?)
        };
        Ok(Some((plan, set)))
    }
}

/// Whether `plan` drops rows of what it reads: a filter, a scan's pushed-down filter, a semi or
/// anti join, a limit.
fn has_filter(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|p| {
        found = match p {
            LogicalPlan::Filter(_) | LogicalPlan::Limit(_) => true,
            LogicalPlan::TableScan(s) => !s.filters.is_empty(),
            LogicalPlan::Join(j) => matches!(
                j.join_type,
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::RightSemi | JoinType::RightAnti
            ),
            _ => false,
        };
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// Whether every table `plan` reads is one that never changes.
fn never_changes(plan: &LogicalPlan, fixed: &BTreeSet<String>) -> bool {
    let mut all = true;
    let _ = plan.apply(|p| {
        if let LogicalPlan::TableScan(s) = p {
            if !fixed.contains(s.table_name.table()) {
                all = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    all
}
