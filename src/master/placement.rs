//! Placement: which datanodes get a new object's replicas. Pure functions over the list
//! of candidate nodes, so the policy is tested without a server.
//!
//! The policy is the original AetherStore's: distinct nodes chosen uniformly at random.

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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
