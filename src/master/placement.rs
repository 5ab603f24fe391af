//! Placement: which datanodes get a new object's replicas. Pure functions over the list
//! of candidate nodes, so the policy is tested without a server.
//!
//! The policy: distinct nodes; an object's replicas over as many zones as there are
//! (each pick prefers a zone the object has no replica in yet); within that, nodes
//! chosen at random weighted by their free space, so a small disk does not fill first.

use rand::seq::SliceRandom;
use rand::Rng;

/// Picks `n` distinct candidates at random, or says how many are missing.
pub fn choose_random<T: Clone>(candidates: &[T], n: usize, rng: &mut impl Rng) -> Result<Vec<T>, String> {
    if n == 0 {
        return Err("replication must be at least 1".to_string());
    }
    if candidates.len() < n {
        return Err(format!(
            "need {n} datanodes for {n} replicas but only {} are eligible; start more datanodes or ask for fewer replicas",
            candidates.len()
        ));
    }
    Ok(candidates.choose_multiple(rng, n).cloned().collect())
}

/// Picks `n` distinct nodes, from `preferred` as far as they go and the rest from
/// `fallback`; says how many are missing when both together are too few.
pub fn choose_preferring<T: Clone>(
    preferred: &[T],
    fallback: &[T],
    n: usize,
    rng: &mut impl Rng,
) -> Result<Vec<T>, String> {
    if preferred.len() >= n || fallback.is_empty() {
        return choose_random(preferred, n, rng);
    }
    let all: Vec<T> = preferred.iter().chain(fallback).cloned().collect();
    // Checks the total (and that n is not 0) with the same message as one pool would.
    choose_random(&all, n, rng)?;
    let mut chosen = preferred.to_vec();
    chosen.extend(choose_random(fallback, n - preferred.len(), rng)?);
    chosen.shuffle(rng);
    Ok(chosen)
}

/// A node placement may choose, with what spreading and weighting need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site<T> {
    pub node: T,
    /// Its zone (rack, room, site); `""` when it named none.
    pub zone: String,
    /// Free space, as its last heartbeat said; unknown right after a master restart.
    pub free_bytes: Option<u64>,
}

/// Picks `n` distinct sites, from `preferred` as far as they go and the rest from
/// `fallback`. Each pick prefers a site whose zone is neither in `used_zones` (zones of
/// copies the object already has) nor picked before; among those it picks at random,
/// weighted by free space (a site whose space is unknown weighs as much as the average
/// known one). Says how many are missing when there are too few sites.
pub fn choose_spread<T: Clone>(
    preferred: &[Site<T>],
    fallback: &[Site<T>],
    used_zones: &[String],
    n: usize,
    rng: &mut impl Rng,
) -> Result<Vec<T>, String> {
    if n == 0 {
        return Err("replication must be at least 1".to_string());
    }
    let eligible = preferred.len() + fallback.len();
    if eligible < n {
        return Err(format!(
            "need {n} datanodes for {n} replicas but only {eligible} are eligible; start more datanodes or ask for fewer replicas"
        ));
    }
    let mut zones: Vec<String> = used_zones.to_vec();
    let mut pools: [Vec<&Site<T>>; 2] = [preferred.iter().collect(), fallback.iter().collect()];
    let mut chosen = Vec::with_capacity(n);
    for pool in pools.iter_mut() {
        while chosen.len() < n && !pool.is_empty() {
            let new_zone: Vec<usize> = (0..pool.len()).filter(|&i| !zones.contains(&pool[i].zone)).collect();
            let among: Vec<usize> = if new_zone.is_empty() { (0..pool.len()).collect() } else { new_zone };
            let pick = among[weighted_index(&among.iter().map(|&i| pool[i].free_bytes).collect::<Vec<_>>(), rng)];
            let site = pool.swap_remove(pick);
            zones.push(site.zone.clone());
            chosen.push(site.node.clone());
        }
    }
    Ok(chosen)
}

/// An index into `weights` chosen at random in proportion to each weight; unknown
/// weights count as the average known one, and all-zero weights as equal.
fn weighted_index(weights: &[Option<u64>], rng: &mut impl Rng) -> usize {
    let known: Vec<u64> = weights.iter().flatten().copied().collect();
    let average = if known.is_empty() {
        1
    } else {
        (known.iter().map(|&w| w as u128).sum::<u128>() / known.len() as u128).max(1)
    };
    let weights: Vec<u128> = weights.iter().map(|w| w.map_or(average, |w| w as u128)).collect();
    let total: u128 = weights.iter().sum();
    if total == 0 {
        return rng.gen_range(0..weights.len());
    }
    let mut point = rng.gen_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if point < w {
            return i;
        }
        point -= w;
    }
    weights.len() - 1
}

/// How full a node is, for rebalancing.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage<T> {
    pub node: T,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
}

impl<T> Usage<T> {
    /// The used fraction of its capacity, 0 to 1.
    pub fn used(&self) -> f64 {
        if self.capacity_bytes == 0 {
            return 1.0;
        }
        1.0 - self.free_bytes.min(self.capacity_bytes) as f64 / self.capacity_bytes as f64
    }
}

/// The rebalancing step, if one is due: the fullest and the emptiest node (by used
/// fraction) when they are more than `band` apart (e.g. 0.10 for 10 percentage points),
/// and how many bytes to move from one to the other: half of what would make them equal,
/// so that a move planned on heartbeats that lag behind cannot overshoot.
pub fn rebalance_step<T: Clone>(nodes: &[Usage<T>], band: f64) -> Option<(T, T, u64)> {
    let fullest = nodes.iter().max_by(|a, b| a.used().total_cmp(&b.used()))?;
    let emptiest = nodes.iter().min_by(|a, b| a.used().total_cmp(&b.used()))?;
    let gap = fullest.used() - emptiest.used();
    if gap <= band {
        return None;
    }
    // Moving b bytes changes the fullest by b/Cf and the emptiest by b/Ce: they meet at
    // b = gap / (1/Cf + 1/Ce).
    let meet = gap / (1.0 / fullest.capacity_bytes.max(1) as f64 + 1.0 / emptiest.capacity_bytes.max(1) as f64);
    Some((fullest.node.clone(), emptiest.node.clone(), (meet / 2.0).max(1.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn site(node: u32, zone: &str, free: Option<u64>) -> Site<u32> {
        Site { node, zone: zone.to_string(), free_bytes: free }
    }

    #[test]
    fn replicas_spread_over_every_zone_there_is() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Zone a has four nodes, b and c one each: three replicas take one of each zone.
        let sites = [site(1, "a", None), site(2, "a", None), site(3, "a", None), site(4, "a", None)];
        let mut all = sites.to_vec();
        all.extend([site(5, "b", None), site(6, "c", None)]);
        for _ in 0..200 {
            let mut chosen = choose_spread(&all, &[], &[], 3, &mut rng).unwrap();
            chosen.sort();
            assert!(chosen[0] <= 4 && chosen[1] == 5 && chosen[2] == 6, "{chosen:?}");
        }
        // Two zones, three replicas: both zones are used, one twice.
        for _ in 0..200 {
            let chosen = choose_spread(&all[..5], &[], &[], 3, &mut rng).unwrap();
            assert!(chosen.contains(&5), "{chosen:?}");
        }
        // A repair's new copy goes to a zone the object's copies are not in.
        for _ in 0..200 {
            assert_eq!(choose_spread(&all, &[], &["a".into(), "b".into()], 1, &mut rng).unwrap(), vec![6]);
        }
        // Alive nodes first, whatever their zone; suspect ones only fill up.
        let chosen = choose_spread(&all[..2], &[site(9, "z", None)], &[], 2, &mut rng).unwrap();
        assert!(!chosen.contains(&9));
        assert!(choose_spread(&all[..2], &[site(9, "z", None)], &[], 4, &mut rng).unwrap_err().contains("only 3"));
    }

    #[test]
    fn placement_is_weighted_by_free_space() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // A node with three times the free space gets about three times the replicas.
        let sites = [site(0, "", Some(100 << 30)), site(1, "", Some(300 << 30)), site(2, "", None)];
        let mut hits = [0u32; 3];
        for _ in 0..4000 {
            hits[choose_spread(&sites, &[], &[], 1, &mut rng).unwrap()[0] as usize] += 1;
        }
        // Unknown counts as the average (200 GiB): expected 667, 2000, 1333.
        assert!((550..800).contains(&hits[0]), "{hits:?}");
        assert!((1850..2150).contains(&hits[1]), "{hits:?}");
        assert!((1180..1480).contains(&hits[2]), "{hits:?}");
        let full = [site(0, "", Some(0)), site(1, "", Some(0))];
        assert_eq!(choose_spread(&full, &[], &[], 2, &mut rng).unwrap().len(), 2);
    }

    #[test]
    fn rebalance_moves_half_the_gap_from_the_fullest_to_the_emptiest_outside_the_band() {
        let usage =
            |node: &'static str, capacity: u64, free: u64| Usage { node, capacity_bytes: capacity, free_bytes: free };
        let nodes = [usage("full", 1000, 200), usage("mid", 1000, 500), usage("empty", 1000, 1000)];
        // 80% and 0% used: they meet after 400 bytes; half of that per step.
        assert_eq!(rebalance_step(&nodes, 0.10), Some(("full", "empty", 200)));
        assert_eq!(rebalance_step(&[usage("a", 1000, 450), usage("b", 1000, 500)], 0.10), None);
        // A small disk at 50% and a big one at 10%: bytes by capacities.
        let (from, to, bytes) = rebalance_step(&[usage("small", 100, 50), usage("big", 900, 810)], 0.10).unwrap();
        assert_eq!((from, to), ("small", "big"));
        assert_eq!(bytes, 18, "meet at 36 bytes: 0.4 / (1/100 + 1/900)");
        assert_eq!(rebalance_step::<&str>(&[], 0.10), None);
    }

    #[test]
    fn picks_distinct_nodes_and_spreads_load() {
        let nodes: Vec<u32> = (0..5).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut hits = [0u32; 5];
        for _ in 0..1000 {
            let mut chosen = choose_random(&nodes, 3, &mut rng).unwrap();
            chosen.sort();
            chosen.dedup();
            assert_eq!(chosen.len(), 3);
            for node in chosen {
                hits[node as usize] += 1;
            }
        }
        // Each node is expected 600 times; a fair choice stays well inside these bounds.
        assert!(hits.iter().all(|&h| (450..750).contains(&h)), "{hits:?}");
    }

    #[test]
    fn suspect_nodes_only_fill_what_alive_ones_cannot() {
        let mut rng = rand::thread_rng();
        for _ in 0..50 {
            let mut chosen = choose_preferring(&[1, 2], &[8, 9], 3, &mut rng).unwrap();
            chosen.sort();
            assert!(chosen.starts_with(&[1, 2]) && chosen.len() == 3, "{chosen:?}");
            assert!(choose_preferring(&[1, 2, 3], &[9], 3, &mut rng).unwrap().iter().all(|n| *n != 9));
        }
        assert!(choose_preferring(&[1], &[9], 3, &mut rng).unwrap_err().contains("only 2"));
    }

    #[test]
    fn too_few_nodes_or_zero_replicas_is_an_error() {
        let mut rng = rand::thread_rng();
        assert!(choose_random(&[1, 2], 3, &mut rng).unwrap_err().contains("only 2"));
        assert!(choose_random(&[1, 2], 0, &mut rng).is_err());
        assert_eq!(choose_random(&[1, 2], 2, &mut rng).unwrap().len(), 2);
    }
}
