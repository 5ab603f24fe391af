//! Repair planning: which copies to make so every object is back at its replication
//! factor. A pure function over the under-replicated objects and the nodes that can take
//! a copy; the maintenance loop runs the plan.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::Rng;

/// An object with fewer healthy replicas than it should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderReplicated {
    pub object: String,
    pub replication: usize,
    pub size: u64,
    /// Nodes whose copy is confirmed, alive or suspect: the copies that count, and the
    /// sources.
    pub healthy: Vec<String>,
    /// Nodes whose confirmed copy is on a read-only disk: not counted, but still
    /// readable, so a source when there is no healthy copy.
    pub read_only: Vec<String>,
    /// Every node with any record of the object, healthy or not: not a target, unless
    /// it is one of `lacking`.
    pub holders: Vec<String>,
    /// Live holders known to lack their copy (lost or quarantined, no deletion pending):
    /// targets when there are not enough nodes without any record.
    pub lacking: Vec<String>,
}

/// One copy to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub object: String,
    pub source: String,
    pub target: String,
}

/// Plans copies, objects with the fewest healthy replicas first. Targets are chosen at
/// random among `targets` (nodes that may take new replicas) that have no record of the
/// object, preferring zones (`zones`: node → zone) none of its healthy copies is in, then
/// among those known to have lost their copy (so a small cluster can make a lost copy
/// again where it was); sources are the healthy holders with the least work planned so
/// far (holders on read-only disks when no healthy one is left). Objects with no copy to
/// read from cannot be repaired and are left out.
pub fn plan(
    objects: &[UnderReplicated],
    targets: &[String],
    zones: &HashMap<String, String>,
    rng: &mut impl Rng,
) -> Vec<Transfer> {
    let mut order: Vec<&UnderReplicated> =
        objects.iter().filter(|o| !o.healthy.is_empty() || !o.read_only.is_empty()).collect();
    order.sort_by_key(|o| o.healthy.len());
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut transfers = Vec::new();
    for object in order {
        let missing = object.replication.saturating_sub(object.healthy.len());
        let fresh: Vec<&String> = targets.iter().filter(|t| !object.holders.contains(t)).collect();
        let mut chosen = spread_over_zones(fresh, &object.healthy, zones, missing, rng);
        let again: Vec<&String> = targets.iter().filter(|t| object.lacking.contains(t)).collect();
        chosen.extend(again.choose_multiple(rng, missing - chosen.len()).copied());
        let sources = if object.healthy.is_empty() { &object.read_only } else { &object.healthy };
        for target in chosen {
            let source = sources
                .iter()
                .min_by_key(|s| load.get(s.as_str()).copied().unwrap_or(0))
                .expect("objects without a copy to read were filtered out");
            *load.entry(source).or_default() += 1;
            *load.entry(target.as_str()).or_default() += 1;
            transfers.push(Transfer {
                object: object.object.clone(),
                source: source.clone(),
                target: (*target).clone(),
            });
        }
    }
    transfers
}

/// Moves that spread an object over more zones: for each object (id, nodes holding a
/// counted copy) with two copies in one zone while a node of `targets` (that holds none)
/// is in a zone the object has no copy in, one copy from the crowded zone goes there.
/// Returns the transfers; each one's source is also the node whose copy is released.
pub fn zone_fixes(
    objects: &[(String, Vec<String>)],
    targets: &[String],
    zones: &HashMap<String, String>,
    rng: &mut impl Rng,
) -> Vec<Transfer> {
    let zone = |node: &str| zones.get(node).map_or("", String::as_str);
    let mut fixes = Vec::new();
    for (object, holders) in objects {
        let held: Vec<&str> = holders.iter().map(|h| zone(h)).collect();
        let Some(crowded) = holders.iter().find(|h| held.iter().filter(|z| **z == zone(h)).count() > 1) else {
            continue;
        };
        let free: Vec<&String> = targets.iter().filter(|t| !holders.contains(t) && !held.contains(&zone(t))).collect();
        if let Some(target) = free.choose(rng) {
            fixes.push(Transfer { object: object.clone(), source: crowded.clone(), target: (*target).clone() });
        }
    }
    fixes
}

/// Up to `n` of `candidates` at random, each preferring a zone that neither `healthy`
/// nor an earlier pick is in (nodes without a zone share the zone `""`).
fn spread_over_zones<'a>(
    mut candidates: Vec<&'a String>,
    healthy: &[String],
    zones: &HashMap<String, String>,
    n: usize,
    rng: &mut impl Rng,
) -> Vec<&'a String> {
    let zone = |node: &str| zones.get(node).map_or("", String::as_str);
    let mut used: Vec<&str> = healthy.iter().map(|h| zone(h)).collect();
    candidates.shuffle(rng);
    let mut chosen = Vec::with_capacity(n);
    while chosen.len() < n && !candidates.is_empty() {
        let pick = candidates.iter().position(|c| !used.contains(&zone(c))).unwrap_or(0);
        let node = candidates.remove(pick);
        used.push(zone(node));
        chosen.push(node);
    }
    chosen
}

/// Groups transfers by (source, target) into batches of at most `batch` objects, so one
/// request moves many small objects.
pub fn batches(transfers: Vec<Transfer>, batch: usize) -> Vec<(String, String, Vec<String>)> {
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut index: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for transfer in transfers {
        let key = (transfer.source.clone(), transfer.target.clone());
        let slots = index.entry(key).or_default();
        match slots.last().copied().filter(|&i| groups[i].2.len() < batch) {
            Some(i) => groups[i].2.push(transfer.object),
            None => {
                slots.push(groups.len());
                groups.push((transfer.source, transfer.target, vec![transfer.object]));
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn object(name: &str, replication: usize, healthy: &[&str], holders: &[&str]) -> UnderReplicated {
        UnderReplicated {
            object: name.into(),
            replication,
            size: 1,
            healthy: healthy.iter().map(|s| s.to_string()).collect(),
            read_only: Vec::new(),
            holders: holders.iter().map(|s| s.to_string()).collect(),
            lacking: Vec::new(),
        }
    }

    #[test]
    fn a_node_that_lost_its_copy_takes_it_again_only_when_no_other_can() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut lost = object("lost-on-c", 3, &["a", "b"], &["a", "b", "c"]);
        lost.lacking = vec!["c".to_string()];
        let three = plan(std::slice::from_ref(&lost), &nodes(&["a", "b", "c"]), &HashMap::new(), &mut rng);
        assert_eq!(three.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(), vec!["c"]);
        let four = plan(std::slice::from_ref(&lost), &nodes(&["a", "b", "c", "d"]), &HashMap::new(), &mut rng);
        assert_eq!(four.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(), vec!["d"]);
        // A holder not known to lack its copy (a dead node's, or one with a deletion
        // pending) is never a target.
        let held = object("held", 3, &["a", "b"], &["a", "b", "c"]);
        assert!(plan(&[held], &nodes(&["a", "b", "c"]), &HashMap::new(), &mut rng).is_empty());
    }

    #[test]
    fn copies_on_read_only_disks_are_sources_only_when_no_healthy_copy_is_left() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut stuck = object("only-on-ro", 2, &[], &["ro1", "ro2"]);
        stuck.read_only = nodes(&["ro1", "ro2"]);
        let mut mixed = object("mixed", 2, &["a"], &["a", "ro1"]);
        mixed.read_only = nodes(&["ro1"]);
        let plan = plan(&[stuck, mixed], &nodes(&["a", "b", "c"]), &HashMap::new(), &mut rng);
        let stuck: Vec<&Transfer> = plan.iter().filter(|t| t.object == "only-on-ro").collect();
        assert_eq!(stuck.len(), 2, "{plan:?}");
        assert!(stuck.iter().all(|t| t.source.starts_with("ro") && !t.target.starts_with("ro")), "{plan:?}");
        let mixed: Vec<&Transfer> = plan.iter().filter(|t| t.object == "mixed").collect();
        assert_eq!(mixed.iter().map(|t| t.source.as_str()).collect::<Vec<_>>(), vec!["a"], "{plan:?}");
    }

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fewest_replicas_first_and_never_onto_a_holder() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let objects = vec![
            object("two-left", 3, &["a", "b"], &["a", "b", "dead"]),
            object("one-left", 3, &["c"], &["c", "dead"]),
            object("lost", 2, &[], &["dead"]),
        ];
        let plan = plan(&objects, &nodes(&["a", "b", "c", "d"]), &HashMap::new(), &mut rng);
        assert_eq!(plan[0].object, "one-left");
        assert_eq!(plan.iter().filter(|t| t.object == "one-left").count(), 2);
        assert_eq!(plan.iter().filter(|t| t.object == "two-left").count(), 1);
        assert!(plan.iter().all(|t| t.object != "lost"));
        for t in &plan {
            let o = objects.iter().find(|o| o.object == t.object).unwrap();
            assert!(o.healthy.contains(&t.source), "{t:?}");
            assert!(!o.holders.contains(&t.target), "{t:?}");
        }
    }

    #[test]
    fn takes_what_targets_there_are_and_spreads_sources() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let objects: Vec<_> = (0..100).map(|i| object(&format!("o{i}"), 3, &["a", "b"], &["a", "b", "x"])).collect();
        let plan = plan(&objects, &nodes(&["a", "b", "c"]), &HashMap::new(), &mut rng);
        assert_eq!(plan.len(), 100);
        assert!(plan.iter().all(|t| t.target == "c"));
        let from_a = plan.iter().filter(|t| t.source == "a").count();
        assert!((45..=55).contains(&from_a), "{from_a} of 100 from a");
        assert!(self::plan(&objects, &nodes(&["a", "b"]), &HashMap::new(), &mut rng).is_empty());
    }

    #[test]
    fn a_new_copy_goes_to_a_zone_the_object_is_not_in() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let zones: HashMap<String, String> =
            [("a", "z1"), ("b", "z1"), ("c", "z1"), ("d", "z2"), ("e", "z3")].map(|(n, z)| (n.into(), z.into())).into();
        for _ in 0..50 {
            let one = plan(&[object("o", 2, &["a"], &["a", "dead"])], &nodes(&["b", "c", "d"]), &zones, &mut rng);
            assert_eq!(one.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(), vec!["d"]);
            let two = plan(&[object("o", 3, &["a"], &["a"])], &nodes(&["b", "c", "d", "e"]), &zones, &mut rng);
            let mut targets: Vec<&str> = two.iter().map(|t| t.target.as_str()).collect();
            targets.sort();
            assert_eq!(targets, vec!["d", "e"]);
        }
    }

    #[test]
    fn two_copies_in_one_zone_move_one_when_another_zone_has_room() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let zones: HashMap<String, String> =
            [("a", "east"), ("b", "east"), ("c", "west"), ("d", "west")].map(|(n, z)| (n.into(), z.into())).into();
        let objects = vec![
            ("crowded".to_string(), nodes(&["a", "b"])),
            ("spread".to_string(), nodes(&["a", "c"])),
            ("crowded-west".to_string(), nodes(&["c", "d"])),
        ];
        let fixes = zone_fixes(&objects, &nodes(&["a", "b", "c", "d"]), &zones, &mut rng);
        assert_eq!(fixes.len(), 2, "{fixes:?}");
        assert!(
            fixes[0].object == "crowded" && fixes[0].source == "a" && ["c", "d"].contains(&fixes[0].target.as_str())
        );
        assert!(
            fixes[1].object == "crowded-west"
                && fixes[1].source == "c"
                && ["a", "b"].contains(&fixes[1].target.as_str())
        );
        // No other zone with room: nothing moves.
        assert!(zone_fixes(&objects[..1], &nodes(&["a", "b"]), &zones, &mut rng).is_empty());
    }

    #[test]
    fn batches_group_by_source_and_target() {
        let t = |o: &str, s: &str, d: &str| Transfer { object: o.into(), source: s.into(), target: d.into() };
        let groups = batches(vec![t("1", "a", "c"), t("2", "a", "c"), t("3", "b", "c"), t("4", "a", "c")], 2);
        assert_eq!(
            groups,
            vec![
                ("a".into(), "c".into(), vec!["1".into(), "2".into()]),
                ("b".into(), "c".into(), vec!["3".into()]),
                ("a".into(), "c".into(), vec!["4".into()]),
            ]
        );
    }
}
