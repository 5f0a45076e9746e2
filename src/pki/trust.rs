//! CA rotation with overlapping trust, as Swarm rotates its own CA: services first learn to
//! trust the new CA (while still presenting leaves of the old one), then their leaves move to
//! the new CA (everyone trusts both meanwhile), then the old CA leaves the trust bundle. Each
//! step is one generation; the decisions below take only what the live generation holds.
//!
//! CAs are named by the sha256 of their certificate PEM.

/// Whether leaves signed by another CA may be re-issued by `signing` in the next generation:
/// yes when the live generation has no such leaf, when it distributes no trust bundle (no
/// service verifies its peers from one), or when its trust bundle already holds `signing` —
/// otherwise a re-issued leaf would be refused by a task that still trusts only the old CA.
pub fn may_switch_leaves(signing: &str, live_trust: &[String], live_leaf_cas: &[String]) -> bool {
    live_leaf_cas.iter().all(|c| c == signing)
        || live_trust.is_empty()
        || live_trust.iter().any(|c| c == signing)
}

/// The CAs the next generation's trust bundle holds, the signing CA first: every CA that
/// signed a leaf of the next generation, or of the live one (its tasks keep presenting those
/// leaves until they are replaced).
pub fn trust_bundle(
    signing: &str,
    next_leaf_cas: &[String],
    live_leaf_cas: &[String],
) -> Vec<String> {
    let mut out = vec![signing.to_string()];
    for c in next_leaf_cas.iter().chain(live_leaf_cas) {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// A rotation from CA "old" to "new" over successive generations converges in three,
    /// and at no step does a leaf present a CA that some live task does not trust.
    #[test]
    fn rotation_overlaps_trust_and_converges() {
        let leaves = 3;
        // the live generation: its trust bundle and the CAs of its leaves
        let (mut trust, mut cas) = (v(&["old"]), v(&["old", "old", "old"]));
        let mut steps = Vec::new();
        for _ in 0..5 {
            let switch = may_switch_leaves("new", &trust, &cas);
            let next_cas: Vec<String> = if switch {
                vec!["new".to_string(); leaves]
            } else {
                cas.clone()
            };
            let next_trust = trust_bundle("new", &next_cas, &cas);
            // during the rolling update old and new tasks coexist: old tasks verify the new
            // leaves with the live bundle, new tasks verify the old leaves with the next one
            for c in &next_cas {
                assert!(trust.contains(c), "new leaf of {c}, live trust {trust:?}");
            }
            for c in &cas {
                assert!(
                    next_trust.contains(c),
                    "old leaf of {c}, next trust {next_trust:?}"
                );
            }
            if next_trust == trust && next_cas == cas {
                break;
            }
            steps.push((switch, next_trust.clone()));
            (trust, cas) = (next_trust, next_cas);
        }
        assert_eq!(
            steps,
            vec![
                (false, v(&["new", "old"])),
                (true, v(&["new", "old"])),
                (true, v(&["new"])),
            ]
        );
        assert_eq!(cas, v(&["new", "new", "new"]));
    }

    #[test]
    fn first_install_and_stacks_without_trust_switch_at_once() {
        assert!(may_switch_leaves("new", &[], &[]));
        assert!(may_switch_leaves("new", &[], &v(&["old"])));
        assert!(!may_switch_leaves("new", &v(&["old"]), &v(&["old"])));
        assert!(may_switch_leaves("new", &v(&["new", "old"]), &v(&["old"])));
        assert_eq!(trust_bundle("a", &v(&["a"]), &[]), v(&["a"]));
    }
}
