//! `pullwatch_image_pulls_by_image_total`, kept outside the `prometheus` registry.
//!
//! It is the one family that can reach thousands of series (one per image, up to
//! `--image-label-cap`). The registry's `gather()` builds, allocates and sorts a protobuf message
//! per series on every scrape, which made `/metrics` with 10 000 images take 13–28 ms
//! (docs/performance.md). Here the counts live in a sorted map and are written straight into the
//! text exposition, a few hundred nanoseconds per series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

/// Success and failure counts per image, rendered as one counter family.
#[derive(Debug, Default)]
pub struct ImagePullCounts {
    /// image → [successes, failures]; a BTreeMap so that rendering needs no sort.
    counts: Mutex<BTreeMap<Box<str>, [u64; 2]>>,
}

/// The family's name, a public API listed in [`super::metrics::FAMILIES`].
pub(crate) const NAME: &str = "pullwatch_image_pulls_by_image_total";

impl ImagePullCounts {
    /// Counts one finished attempt of `image` (already capped by the caller).
    pub fn inc(&self, image: &str, success: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match counts.get_mut(image) {
            Some(slot) => slot,
            None => counts.entry(image.into()).or_default(),
        };
        slot[usize::from(!success)] += 1;
    }

    /// Removes `image`'s series (it lost its label slot).
    pub fn forget(&self, image: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.remove(image);
    }

    /// Appends the family in the Prometheus text format (0.0.4): HELP, TYPE, then one line per
    /// image and result that was counted at least once, sorted by image.
    pub fn encode(&self, help: &str, out: &mut String) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        out.reserve(counts.len() * 2 * (NAME.len() + 64));
        out.push_str("# HELP ");
        out.push_str(NAME);
        out.push(' ');
        escape_into(help, false, out);
        out.push_str("\n# TYPE ");
        out.push_str(NAME);
        out.push_str(" counter\n");
        for (image, n) in counts.iter() {
            for (value, result) in [(n[1], "failure"), (n[0], "success")] {
                if value == 0 {
                    continue;
                }
                out.push_str(NAME);
                out.push_str("{image=\"");
                escape_into(image, true, out);
                out.push_str("\",result=\"");
                out.push_str(result);
                out.push_str("\"} ");
                // Writing into a String cannot fail.
                let _ = write!(out, "{value}");
                out.push('\n');
            }
        }
    }
}

/// Escapes `\` and newline (and `"` inside label values), as the text format requires.
fn escape_into(s: &str, label_value: bool, out: &mut String) {
    if !s.contains(['\\', '\n', '"']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if label_value => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(c: &ImagePullCounts) -> String {
        let mut out = String::new();
        c.encode("Pulls by image.", &mut out);
        out
    }

    #[test]
    fn renders_sorted_nonzero_series_with_header() {
        let c = ImagePullCounts::default();
        c.inc("b.io/x:1", false);
        c.inc("a.io/x:1", true);
        c.inc("a.io/x:1", true);
        c.inc("b.io/x:1", false);
        c.inc("b.io/x:1", true);
        assert_eq!(
            render(&c),
            "# HELP pullwatch_image_pulls_by_image_total Pulls by image.\n\
             # TYPE pullwatch_image_pulls_by_image_total counter\n\
             pullwatch_image_pulls_by_image_total{image=\"a.io/x:1\",result=\"success\"} 2\n\
             pullwatch_image_pulls_by_image_total{image=\"b.io/x:1\",result=\"failure\"} 2\n\
             pullwatch_image_pulls_by_image_total{image=\"b.io/x:1\",result=\"success\"} 1\n"
        );
    }

    #[test]
    fn escapes_label_values_and_help() {
        let c = ImagePullCounts::default();
        c.inc("we\"ird\\im\nage", true);
        let mut out = String::new();
        c.encode("a \\ \"b\"\nc", &mut out);
        assert!(out.starts_with("# HELP pullwatch_image_pulls_by_image_total a \\\\ \"b\"\\nc\n"));
        assert!(
            out.contains("{image=\"we\\\"ird\\\\im\\nage\",result=\"success\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn every_counted_pull_is_rendered_once() {
        let c = ImagePullCounts::default();
        for i in 0..50 {
            c.inc(&format!("r.io/app-{i}:v\"{i}\""), i % 3 == 0);
        }
        let text = render(&c);
        let samples: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 50);
        let total: u64 = samples
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 50);
    }
}
