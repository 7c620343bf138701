//! Re-checks a key-value history written by a failing run (a JSON array of
//! `linear::Op`), and narrows a failure down: the shortest prefix (in call
//! order) that already fails, and the operations around its end.
//!
//! ```sh
//! cargo run -p roster-check --example replay -- /tmp/roster-chaos-SEED.json
//! ```

use roster_check::linear::{self, KeyResult, Op};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: replay HISTORY.json")?;
    let mut ops: Vec<Op> = serde_json::from_slice(&std::fs::read(&path)?)?;
    ops.sort_by_key(|o| o.call);
    let report = linear::check(&ops);
    println!(
        "{}",
        report
            .verdict()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
    );
    for (key, _) in &report.failures {
        let history: Vec<Op> = ops.iter().filter(|o| &o.key == key).cloned().collect();
        // The first prefix that fails (a prefix may also fail because it cut
        // off a write a read in it saw: read the end of it with that in mind).
        let (mut low, mut high) = (1, history.len());
        while low < high {
            let mid = (low + high) / 2;
            match linear::check_key(&history[..mid]) {
                KeyResult::NotLinearizable => high = mid,
                _ => low = mid + 1,
            }
        }
        println!(
            "key {key}: {} ops, first failing prefix {low}",
            history.len()
        );
        let start = low.saturating_sub(12);
        let end = (low + 3).min(history.len());
        for (i, op) in history[start..end].iter().enumerate() {
            println!(
                "  #{:<4} client {} call {:>10.3} ms ret {:>12} {:?} -> {:?}",
                start + i,
                op.client,
                op.call as f64 / 1e6,
                op.ret.map_or("unknown".to_string(), |r| format!(
                    "{:.3} ms",
                    r as f64 / 1e6
                )),
                op.input,
                op.output
            );
        }
    }
    Ok(())
}
