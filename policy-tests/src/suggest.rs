//! "Did you mean": the closest names by edit distance.

/// Levenshtein distance over chars (insertions, deletions, substitutions cost 1).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The `n` candidates closest to `name`, nearest first (ties by name), without duplicates.
pub fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    n: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (levenshtein(name, c), c))
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(n)
        .map(|(_, c)| c.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("prod/web", "prod/web"), 0);
        assert_eq!(levenshtein("prod/wbe", "prod/web"), 2);
    }

    #[test]
    fn closest_three_nearest_first() {
        let c = [
            "prod/web",
            "prod/api",
            "dev/web",
            "prod/db",
            "kube-system/dns",
        ];
        assert_eq!(
            closest("prod/webb", c, 3),
            vec!["prod/web", "prod/db", "prod/api"]
        );
        assert_eq!(closest("dev/wbe", c, 1), vec!["dev/web"]);
    }
}
