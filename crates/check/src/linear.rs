//! Linearizability of key-value operations.
//!
//! Each key is a register (absent or a value) checked on its own: a history
//! is linearizable exactly when each key's sub-history is (linearizability is
//! compositional), and per key the search stays small.
//!
//! The search is Wing and Gong's, with Lowe's memoization, in the form
//! Porcupine uses: the call and return events sorted by time form a list;
//! the search takes the first call it can apply to the model state, removes
//! that operation from the list, and goes on; at a return whose operation it
//! has not placed it backtracks. A (placed set, state) pair seen before is
//! not explored again. An operation whose outcome is unknown (timed out,
//! connection lost) returns at infinity and accepts any output: it may have
//! taken effect at any point after its call, or not at all in effect (placed
//! last).
//!
//! A failing key's history is cut down by dropping reads one at a time while
//! it still fails: a read only constrains, so what is left is still a real
//! observation of the same execution, and still not linearizable.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{Nanos, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    Put {
        value: String,
    },
    Get,
    Delete,
    /// Write `new` if the current value is `expected` (`None`: absent).
    Cas {
        expected: Option<String>,
        new: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    Put,
    Get(Option<String>),
    Delete { deleted: bool },
    Cas { succeeded: bool },
}

/// One operation as a client saw it. `ret`/`output` are `None` when the
/// outcome is unknown; an operation known to have failed (refused, never
/// applied) should not be recorded at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: u64,
    pub key: String,
    pub input: Input,
    pub call: Nanos,
    pub ret: Option<Nanos>,
    pub output: Option<Output>,
}

impl Op {
    fn is_read(&self) -> bool {
        matches!(self.input, Input::Get) && self.output.is_some()
    }
}

/// The register after `input`, if `output` is what it would answer (any
/// output is accepted for an unknown outcome).
fn step(state: &Option<String>, input: &Input, output: Option<&Output>) -> Option<Option<String>> {
    let (next, answer) = match input {
        Input::Put { value } => (Some(value.clone()), Output::Put),
        Input::Get => (state.clone(), Output::Get(state.clone())),
        Input::Delete => (
            None,
            Output::Delete {
                deleted: state.is_some(),
            },
        ),
        Input::Cas { expected, new } => match state == expected {
            true => (Some(new.clone()), Output::Cas { succeeded: true }),
            false => (state.clone(), Output::Cas { succeeded: false }),
        },
    };
    match output {
        Some(seen) if *seen != answer => None,
        _ => Some(next),
    }
}

/// How many search steps one key may take before it is reported as
/// undecided rather than hang the run.
pub const STEP_BUDGET: u64 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyResult {
    Linearizable,
    NotLinearizable,
    /// The budget ran out.
    Undecided,
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// Whether one key's operations (all on the same key) are linearizable.
pub fn check_key(ops: &[Op]) -> KeyResult {
    if ops.is_empty() {
        return KeyResult::Linearizable;
    }
    // Calls before returns at equal times: touching operations are concurrent.
    let mut events: Vec<(Nanos, u8, Event)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((
            op.call,
            0,
            Event {
                op: i,
                is_call: true,
            },
        ));
        events.push((
            op.ret.unwrap_or(Nanos::MAX),
            1,
            Event {
                op: i,
                is_call: false,
            },
        ));
    }
    events.sort_by_key(|(t, order, e)| (*t, *order, e.op));
    let n = events.len();
    // A doubly linked list over the events, with a head sentinel at index n.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = Vec::with_capacity(n + 1);
    prev.push(n);
    prev.extend(0..n - 1);
    next.push(0);
    prev.push(n - 1);
    // Where each operation's call and return sit.
    let mut call_at = vec![0; ops.len()];
    let mut ret_at = vec![0; ops.len()];
    for (at, (_, _, e)) in events.iter().enumerate() {
        if e.is_call {
            call_at[e.op] = at;
        } else {
            ret_at[e.op] = at;
        }
    }
    let head = n;
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = q;
        if q != head {
            prev[q] = p;
        } else {
            prev[head] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, q) = (prev[at], next[at]);
        next[p] = at;
        if q != head {
            prev[q] = at;
        } else {
            prev[head] = at;
        }
    };
    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state: Option<String> = None;
    let mut at = next[head];
    let mut steps = 0u64;
    while next[head] != head {
        steps += 1;
        if steps > STEP_BUDGET {
            return KeyResult::Undecided;
        }
        let event = events[at].2;
        if event.is_call {
            let op = &ops[event.op];
            if let Some(after) = step(&state, &op.input, op.output.as_ref()) {
                placed[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((placed.clone(), after.clone())) {
                    stack.push((event.op, state));
                    state = after;
                    unlink(&mut next, &mut prev, call_at[event.op]);
                    unlink(&mut next, &mut prev, ret_at[event.op]);
                    at = next[head];
                    continue;
                }
                placed[event.op / 64] &= !(1 << (event.op % 64));
            }
            at = next[at];
        } else {
            // The operation returning here is not placed: undo the last choice.
            let Some((op, before)) = stack.pop() else {
                return KeyResult::NotLinearizable;
            };
            placed[op / 64] &= !(1 << (op % 64));
            state = before;
            relink(&mut next, &mut prev, ret_at[op]);
            relink(&mut next, &mut prev, call_at[op]);
            at = next[call_at[op]];
        }
    }
    KeyResult::Linearizable
}

/// Drops reads from a failing history while it keeps failing.
pub fn minimize(ops: &[Op]) -> Vec<Op> {
    let mut kept = ops.to_vec();
    let mut i = 0;
    while i < kept.len() {
        if kept[i].is_read() {
            let mut without = kept.clone();
            without.remove(i);
            if check_key(&without) == KeyResult::NotLinearizable {
                kept = without;
                continue;
            }
        }
        i += 1;
    }
    kept
}

/// What the checker found about a whole history.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub ops: usize,
    pub keys: usize,
    /// Each failing key with its minimized history.
    pub failures: Vec<(String, Vec<Op>)>,
    pub undecided: Vec<String>,
}

impl Report {
    pub fn verdict(&self) -> Verdict {
        let mut anomalies: Vec<String> = self
            .failures
            .iter()
            .map(|(key, ops)| {
                format!(
                    "key {key:?}: not linearizable; minimal history ({} ops): {}",
                    ops.len(),
                    serde_json::to_string(ops).unwrap_or_default()
                )
            })
            .collect();
        anomalies.extend(
            self.undecided
                .iter()
                .map(|key| format!("key {key:?}: undecided within the search budget")),
        );
        Verdict {
            checker: "linearizable",
            checked: self.ops,
            anomalies,
        }
    }
}

/// Checks every key of `ops`.
pub fn check(ops: &[Op]) -> Report {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut report = Report {
        ops: ops.len(),
        keys: by_key.len(),
        failures: Vec::new(),
        undecided: Vec::new(),
    };
    for (key, history) in by_key {
        match check_key(&history) {
            KeyResult::Linearizable => {}
            KeyResult::NotLinearizable => {
                report.failures.push((key.to_string(), minimize(&history)));
            }
            KeyResult::Undecided => report.undecided.push(key.to_string()),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u64,
        input: Input,
        call: Nanos,
        ret: Option<Nanos>,
        output: Option<Output>,
    ) -> Op {
        Op {
            client,
            key: "k".into(),
            input,
            call,
            ret,
            output,
        }
    }

    fn put(client: u64, v: &str, call: Nanos, ret: Nanos) -> Op {
        op(
            client,
            Input::Put { value: v.into() },
            call,
            Some(ret),
            Some(Output::Put),
        )
    }

    fn get(client: u64, seen: Option<&str>, call: Nanos, ret: Nanos) -> Op {
        let output = Output::Get(seen.map(str::to_string));
        op(client, Input::Get, call, Some(ret), Some(output))
    }

    #[test]
    fn sequential_and_concurrent_histories() {
        // put a, then get a: fine.
        assert_eq!(
            check_key(&[put(1, "a", 0, 10), get(2, Some("a"), 20, 30)]),
            KeyResult::Linearizable
        );
        // A stale read after the write completed: not.
        assert_eq!(
            check_key(&[put(1, "a", 0, 10), get(2, None, 20, 30)]),
            KeyResult::NotLinearizable
        );
        // Overlapping: the read may see either.
        assert_eq!(
            check_key(&[put(1, "a", 0, 30), get(2, None, 10, 20)]),
            KeyResult::Linearizable
        );
        assert_eq!(
            check_key(&[put(1, "a", 0, 30), get(2, Some("a"), 10, 20)]),
            KeyResult::Linearizable
        );
        // A value nobody wrote: not.
        assert_eq!(
            check_key(&[put(1, "a", 0, 10), get(2, Some("b"), 20, 30)]),
            KeyResult::NotLinearizable
        );
    }

    #[test]
    fn reads_must_agree_on_an_order() {
        // Two writes overlap; once both are done the register holds one of
        // them, yet later reads see a, then b, then a.
        let ops = [
            put(1, "a", 0, 100),
            put(2, "b", 0, 100),
            get(3, Some("a"), 110, 120),
            get(4, Some("b"), 130, 140),
            get(5, Some("a"), 150, 160),
        ];
        assert_eq!(check_key(&ops), KeyResult::NotLinearizable);
        assert_eq!(check_key(&ops[..3]), KeyResult::Linearizable);
        assert_eq!(check_key(&ops[..4]), KeyResult::NotLinearizable);
        // Minimized: reads go while it still fails; "b then a" after both
        // writes completed is already impossible.
        let minimal = minimize(&ops);
        assert_eq!(check_key(&minimal), KeyResult::NotLinearizable);
        let reads: Vec<_> = minimal
            .iter()
            .filter(|o| o.is_read())
            .map(|o| o.output.clone())
            .collect();
        assert_eq!(
            reads,
            vec![
                Some(Output::Get(Some("b".into()))),
                Some(Output::Get(Some("a".into())))
            ]
        );
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_seem_never_to() {
        let lost = op(1, Input::Put { value: "a".into() }, 0, None, None);
        // Seen by a later read: it applied.
        assert_eq!(
            check_key(&[lost.clone(), get(2, Some("a"), 50, 60)]),
            KeyResult::Linearizable
        );
        // Never seen: fine too.
        assert_eq!(
            check_key(&[lost.clone(), get(2, None, 50, 60)]),
            KeyResult::Linearizable
        );
        // But not before it was called.
        assert_eq!(
            check_key(&[
                get(2, Some("a"), 0, 5),
                op(1, Input::Put { value: "a".into() }, 10, None, None)
            ]),
            KeyResult::NotLinearizable
        );
    }

    #[test]
    fn deletes_and_compare_and_set() {
        let del = |deleted, call, ret| {
            op(
                1,
                Input::Delete,
                call,
                Some(ret),
                Some(Output::Delete { deleted }),
            )
        };
        let cas = |expected: Option<&str>, new: &str, succeeded, call, ret| {
            op(
                2,
                Input::Cas {
                    expected: expected.map(str::to_string),
                    new: new.into(),
                },
                call,
                Some(ret),
                Some(Output::Cas { succeeded }),
            )
        };
        assert_eq!(
            check_key(&[
                put(1, "a", 0, 1),
                del(true, 2, 3),
                get(3, None, 4, 5),
                cas(None, "x", true, 6, 7)
            ]),
            KeyResult::Linearizable
        );
        assert_eq!(
            check_key(&[del(true, 0, 1)]),
            KeyResult::NotLinearizable,
            "nothing to delete"
        );
        // Two compare-and-sets from the same state cannot both succeed.
        assert_eq!(
            check_key(&[
                put(1, "a", 0, 1),
                cas(Some("a"), "b", true, 2, 10),
                cas(Some("a"), "c", true, 3, 9)
            ]),
            KeyResult::NotLinearizable
        );
    }

    #[test]
    fn keys_are_judged_apart_and_reported_by_name() {
        let mut other = get(2, Some("z"), 20, 30);
        other.key = "other".into();
        let ops = [put(1, "a", 0, 10), get(2, Some("a"), 20, 30), other];
        let report = check(&ops);
        assert_eq!((report.ops, report.keys), (3, 2));
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].0, "other");
        let verdict = report.verdict();
        assert!(!verdict.ok());
        assert!(
            verdict.anomalies[0].contains("key \"other\""),
            "{}",
            verdict.anomalies[0]
        );
    }

    #[test]
    fn a_long_concurrent_history_is_decided_quickly() {
        // 8 clients, 200 rounds of overlapping writes and reads of the last value.
        let mut ops = Vec::new();
        for round in 0..200u64 {
            let t = round * 100;
            for client in 0..4 {
                ops.push(put(client, &format!("{round}-{client}"), t, t + 50));
            }
            for client in 4..8 {
                ops.push(get(client, Some(&format!("{round}-3")), t + 60, t + 90));
            }
        }
        assert_eq!(check_key(&ops), KeyResult::Linearizable);
    }
}
