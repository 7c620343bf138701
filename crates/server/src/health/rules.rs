//! The damping rules of a health check, as a pure function of the replicated
//! health and the consecutive probe results the leader has seen: what health
//! the instance should have now, if it differs.
//!
//! The counters live only in the leader's memory and start at zero on every new
//! leader, while the health they are compared against is the replicated one.
//! That is what makes a takeover quiet: a new leader needs as many fresh
//! failures as any leader before it moves an instance down, and a failing probe
//! never moves one *up* (a critical instance whose counter restarted at one
//! failure stays critical rather than becoming warning).

use roster_state::check::CheckSpec;
use roster_state::registry::Health;

/// Consecutive results of one instance's probes, on this leader.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    pub successes: u32,
    pub failures: u32,
}

fn rank(health: Health) -> u8 {
    match health {
        Health::Passing => 0,
        Health::Warning => 1,
        Health::Critical => 2,
    }
}

impl Streak {
    /// Counts one probe result and answers the health the instance should move
    /// to, or `None` if `current` stands.
    pub fn observe(&mut self, ok: bool, check: &CheckSpec, current: Health) -> Option<Health> {
        let wanted = if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            match self.successes >= check.successes_before_passing {
                true => Health::Passing,
                false => current,
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            let level = if self.failures >= check.failures_before_critical {
                Health::Critical
            } else if self.failures >= check.failures_before_warning {
                Health::Warning
            } else {
                Health::Passing
            };
            if rank(level) > rank(current) {
                level
            } else {
                current
            }
        };
        (wanted != current).then_some(wanted)
    }
}

#[cfg(test)]
mod tests {
    use roster_state::check::CheckKind;

    use super::*;

    fn check(warning: u32, critical: u32, passing: u32) -> CheckSpec {
        CheckSpec {
            failures_before_warning: warning,
            failures_before_critical: critical,
            successes_before_passing: passing,
            ..CheckSpec::new(CheckKind::Tcp, "127.0.0.1:1")
        }
    }

    /// Feeds results (`+` success, `-` failure) from `start`, applying each
    /// change as the log would, and writes the health after each result.
    fn run(check: &CheckSpec, start: Health, results: &str) -> String {
        let mut streak = Streak::default();
        let mut health = start;
        let mut trace = String::new();
        for result in results.chars() {
            if let Some(next) = streak.observe(result == '+', check, health) {
                health = next;
            }
            trace.push(match health {
                Health::Passing => 'P',
                Health::Warning => 'W',
                Health::Critical => 'C',
            });
        }
        trace
    }

    #[test]
    fn failures_go_warning_then_critical_at_their_counts() {
        let c = check(2, 4, 1);
        assert_eq!(run(&c, Health::Passing, "-----"), "PWWCC");
    }

    #[test]
    fn recovery_needs_its_count_of_consecutive_successes() {
        let c = check(1, 2, 3);
        assert_eq!(run(&c, Health::Critical, "++-+++"), "CCCCCP");
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let c = check(2, 3, 1);
        assert_eq!(run(&c, Health::Passing, "-+-+--+"), "PPPPPWP");
    }

    #[test]
    fn a_new_leader_never_moves_a_critical_instance_up_on_a_failure() {
        let c = check(1, 3, 1);
        assert_eq!(run(&c, Health::Critical, "-"), "C");
        assert_eq!(run(&c, Health::Warning, "--"), "WW");
    }

    #[test]
    fn warning_equal_to_critical_skips_warning() {
        let c = check(3, 3, 1);
        assert_eq!(run(&c, Health::Passing, "---"), "PPC");
    }
}
