//! Conflicts of bidirectional policies: the same tag pushed with different digests on both sides
//! at about the same time.
//!
//! Every region keeps a ledger of the last write to each tag of the registries it writes: the
//! agent records the pushes users make (their event time, its own region), and a worker records
//! each copy it makes with the time and region of the event that caused it. A job that would
//! replace a destination tag holding *different* content compares the two writes: the later event
//! time wins, ties go to the greater region name ([`TagWrite::wins_over`]). Both regions apply the
//! same rule to the same two writes, so both converge on the winner, and each decision is logged,
//! counted (`ferry_conflicts_total`) and recorded on the job's task.
//!
//! When the destination holds a digest the ledger does not know, its own push event has not been
//! recorded yet (a webhook still on its way): the job waits ([`Decision::Wait`]) for up to
//! [`DECISION_GRACE`] after its event before it treats the destination as older.
//!
//! A push to the destination can land between a job's `HEAD` and its `PUT`; the copy then
//! overwrites it. When that push's webhook has been recorded by the time the copy is (the usual
//! order: the registry notifies at once, a copy takes longer), the ledger holds a write newer than
//! the copy's ([`overtaken_by`]) and the worker puts the newer content back instead of recording
//! its own: without this the two sides would swap contents and stay apart.
//!
//! When that webhook arrives only *after* the copy was recorded, the worker cannot see the push;
//! the agent recording the push can: the ledger hands it the write it replaces, and when that is
//! an older write of other content ([`may_have_overwritten`]) which the tag now holds, the agent
//! puts the push back before forwarding its event ([`crate::regions::restore`]).
//!
//! Before the ledger is read, the two heads of the tag may settle it ([`compare_heads`]): the same
//! content on both sides needs nothing, a source that moved on since the event leaves the decision
//! to the newer event, and a job without an event (a run, the safety net) never replaces a
//! different destination tag; the tag it fills is recorded as the oldest write ([`write_time`]).
//! A newer write the ledger names whose content the destination no longer holds (deleted since)
//! is not put back: the copy stands.
//!
//! Invariants: [`compare_heads`] and [`decide`] are pure; a ledger write never fails a copy that already happened (the
//! caller logs it); the ledger itself ([`crate::store::ledger`]) forgets a write after
//! [`crate::store::ledger::LEDGER_TTL`], long after any conflict could matter.
use std::time::Duration;

use crate::store::ledger::TagWrite;
use crate::store::StartedBy;

/// How long a destination digest without a recorded write holds a job back.
pub const DECISION_GRACE: Duration = Duration::from_secs(15);

/// The rule both regions apply to two writes of a tag.
impl TagWrite {
    /// Later event time wins; on a tie, the greater region name (then digest, so that two writes
    /// never tie).
    pub fn wins_over(&self, other: &TagWrite) -> bool {
        (self.at_ms, &self.region, &self.digest) > (other.at_ms, &other.region, &other.digest)
    }
}

impl std::fmt::Display for TagWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let region = crate::config::Region::new(&self.region);
        write!(
            f,
            "{} (pushed in {region} at {} ms)",
            self.digest, self.at_ms
        )
    }
}

/// What the source and destination heads of a tag decide before the ledger is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heads {
    /// Both sides hold the source's content: nothing to arbitrate.
    Same,
    /// Do not copy, and why.
    Skip(String),
    /// The job's event is weighed against the ledger ([`decide`]).
    Contested,
}

/// Compares a bidirectional job's tag on both sides: `announced` is the digest its event named
/// (`None` for runs and the safety net), `source` what the source holds now, `destination` what
/// the destination holds (`None`: no such tag).
pub fn compare_heads(announced: Option<&str>, source: &str, destination: Option<&str>) -> Heads {
    match (announced, destination) {
        (_, Some(d)) if d == source => Heads::Same,
        // A newer change of the source has its own event, which decides.
        (Some(announced), _) if announced != source => Heads::Skip(format!(
            "superseded: the source now holds {source}, not the announced {announced}"
        )),
        // A run or safety-net job knows no event time: it only fills missing tags.
        (None, Some(d)) => Heads::Skip(format!(
            "both sides hold the tag with different content ({source} here, {d} there); only events decide bidirectional conflicts"
        )),
        _ => Heads::Contested,
    }
}

/// What a job does about a destination tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Copy the source (no conflict, or the incoming write wins).
    Copy {
        /// The destination content the copy replaces after losing the conflict, if any.
        replaces: Option<TagWrite>,
    },
    /// Keep the destination: its write is newer.
    Keep { kept: TagWrite },
    /// The destination changed and its write is not recorded yet: retry later.
    Wait,
}

/// Decides between an incoming write and what the destination holds (`destination`: its current
/// digest, `last`: the ledger's last write of that tag).
pub fn decide(
    incoming: &TagWrite,
    destination: Option<&str>,
    last: Option<&TagWrite>,
    now_ms: i64,
) -> Decision {
    let Some(current) = destination else {
        return Decision::Copy { replaces: None };
    };
    if current == incoming.digest {
        return Decision::Copy { replaces: None };
    }
    match last {
        Some(last) if last.digest == current => {
            if last.wins_over(incoming) {
                Decision::Keep { kept: last.clone() }
            } else {
                Decision::Copy {
                    replaces: Some(last.clone()),
                }
            }
        }
        _ if now_ms.saturating_sub(incoming.at_ms) < crate::clock::duration_ms(DECISION_GRACE) => {
            Decision::Wait
        }
        _ => Decision::Copy { replaces: None },
    }
}

/// The time a bidirectional job's write is recorded with: its event's time, or **0 for a job
/// without an event** (the safety net, runs). Such a job only fills a tag the destination lacks
/// ([`compare_heads`]); when the content it copies was pushed is unknown, and the time the job
/// was made is not it: stamped "now" (by a clock that may run minutes ahead), the fill would win
/// against every real push made until then. Recorded as the oldest write, any push with an event
/// wins over it, on both sides alike.
pub fn write_time(trigger: StartedBy, event_time_ms: i64) -> i64 {
    match trigger {
        StartedBy::EventBased => event_time_ms,
        StartedBy::Manual | StartedBy::Scheduled | StartedBy::Reconcile => 0,
    }
}

/// After a copy wrote `ours`: the newer write of the same tag the ledger learned of meanwhile,
/// which the copy overwrote and the destination must hold again (`last`: the ledger's last write).
pub fn overtaken_by(ours: &TagWrite, last: Option<&TagWrite>) -> Option<TagWrite> {
    last.filter(|last| last.digest != ours.digest && last.wins_over(ours))
        .cloned()
}

/// After a user's push `pushed` of a tag was recorded over `previous` (the ledger's write it
/// replaced): the older write of other content that may have overwritten the push on the registry
/// — a copy whose `PUT` landed after the push and was recorded before the push's webhook arrived.
/// It did overwrite the push when the tag now holds that write's digest
/// ([`crate::regions::restore`] looks); `None` when no older write of other content was recorded.
pub fn may_have_overwritten<'a>(
    pushed: &TagWrite,
    previous: Option<&'a TagWrite>,
) -> Option<&'a TagWrite> {
    previous.filter(|previous| previous.digest != pushed.digest && pushed.wins_over(previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_without_an_event_is_recorded_as_older_than_any_push() {
        assert_eq!(write_time(StartedBy::EventBased, 1_000), 1_000);
        for trigger in [
            StartedBy::Reconcile,
            StartedBy::Manual,
            StartedBy::Scheduled,
        ] {
            let fill = write("x", write_time(trigger, i64::MAX), "z");
            assert!(write("y", 1, "a").wins_over(&fill), "{trigger:?}");
        }
    }

    #[test]
    fn only_an_older_recorded_write_of_other_content_may_have_overwritten_a_push() {
        let pushed = write("p", 200, "b");
        let older_copy = write("x", 100, "a");
        assert_eq!(
            may_have_overwritten(&pushed, Some(&older_copy)),
            Some(&older_copy)
        );
        assert_eq!(
            may_have_overwritten(&pushed, None),
            None,
            "nothing recorded"
        );
        assert_eq!(
            may_have_overwritten(&pushed, Some(&write("p", 100, "a"))),
            None,
            "same content"
        );
        assert_eq!(
            may_have_overwritten(&pushed, Some(&write("x", 300, "a"))),
            None,
            "a newer write legitimately replaced the push"
        );
    }

    #[test]
    fn a_copy_is_overtaken_only_by_a_newer_write_of_other_content() {
        let ours = write("x", 100, "b");
        assert_eq!(overtaken_by(&ours, None), None);
        assert_eq!(
            overtaken_by(&ours, Some(&write("y", 90, "a"))),
            None,
            "older"
        );
        assert_eq!(
            overtaken_by(&ours, Some(&write("x", 200, "a"))),
            None,
            "same content"
        );
        assert_eq!(overtaken_by(&ours, Some(&ours)), None, "our own write");
        assert_eq!(
            overtaken_by(&ours, Some(&write("y", 200, "a"))),
            Some(write("y", 200, "a"))
        );
    }

    fn write(digest: &str, at_ms: i64, region: &str) -> TagWrite {
        TagWrite {
            digest: digest.into(),
            at_ms,
            region: region.into(),
        }
    }

    #[test]
    fn the_same_content_on_both_sides_needs_no_arbitration() {
        assert_eq!(compare_heads(Some("a"), "a", Some("a")), Heads::Same);
        assert_eq!(compare_heads(None, "a", Some("a")), Heads::Same);
    }

    #[test]
    fn a_source_that_moved_on_since_the_event_leaves_the_decision_to_the_newer_event() {
        assert_eq!(
            compare_heads(Some("a"), "b", Some("c")),
            Heads::Skip("superseded: the source now holds b, not the announced a".into())
        );
        assert!(matches!(
            compare_heads(Some("a"), "b", None),
            Heads::Skip(_)
        ));
    }

    #[test]
    fn a_job_without_an_event_fills_missing_tags_but_never_replaces_a_different_one() {
        assert_eq!(compare_heads(None, "a", None), Heads::Contested);
        assert_eq!(
            compare_heads(None, "a", Some("b")),
            Heads::Skip("both sides hold the tag with different content (a here, b there); only events decide bidirectional conflicts".into())
        );
    }

    #[test]
    fn an_event_for_the_current_source_content_is_weighed_against_the_ledger() {
        assert_eq!(compare_heads(Some("a"), "a", Some("b")), Heads::Contested);
        assert_eq!(compare_heads(Some("a"), "a", None), Heads::Contested);
    }

    #[test]
    fn later_event_wins_and_ties_go_to_the_greater_region() {
        assert!(write("a", 2, "eu").wins_over(&write("b", 1, "us")));
        assert!(write("b", 1, "us").wins_over(&write("a", 1, "eu")));
        assert!(!write("a", 1, "eu").wins_over(&write("b", 1, "us")));
        // Never a tie between two different writes.
        assert!(write("b", 1, "eu").wins_over(&write("a", 1, "eu")));
    }

    #[test]
    fn both_sides_reach_the_same_decision() {
        let (eu, us) = (
            write("sha256:e", 1_000, "eu"),
            write("sha256:u", 1_000, "us"),
        );
        let now = 100_000;
        // us's region sees eu's push arrive while it holds its own newer (tie → "us") write.
        assert_eq!(
            decide(&eu, Some("sha256:u"), Some(&us), now),
            Decision::Keep { kept: us.clone() }
        );
        // eu's region sees us's push arrive and gives way.
        assert_eq!(
            decide(&us, Some("sha256:e"), Some(&eu), now),
            Decision::Copy {
                replaces: Some(eu.clone())
            }
        );
    }

    #[test]
    fn missing_or_equal_destination_copies() {
        let w = write("sha256:a", 1, "eu");
        assert_eq!(decide(&w, None, None, 5), Decision::Copy { replaces: None });
        assert_eq!(
            decide(&w, Some("sha256:a"), Some(&write("sha256:x", 9, "us")), 5),
            Decision::Copy { replaces: None }
        );
    }

    #[test]
    fn an_unrecorded_destination_waits_for_its_event_then_gives_way() {
        let w = write("sha256:a", 10_000, "eu");
        let grace = crate::clock::duration_ms(DECISION_GRACE);
        assert_eq!(decide(&w, Some("sha256:b"), None, 10_500), Decision::Wait);
        // The ledger knows an older write of another digest: the destination changed since.
        let stale = write("sha256:c", 1, "us");
        assert_eq!(
            decide(&w, Some("sha256:b"), Some(&stale), 10_500),
            Decision::Wait
        );
        assert_eq!(
            decide(&w, Some("sha256:b"), None, 10_000 + grace),
            Decision::Copy { replaces: None }
        );
    }
}
