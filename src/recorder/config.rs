//! The recorder's flags and settings: label caps, the backoff window, the sources that run and
//! whether an observed success waits for its content record.

use super::authority::{Authority, Sources};
use std::time::Duration;

/// How long an interposer success waits for its content record when the containerd source is
/// on (containerd writes the record, and sends its event, before it answers the call).
pub(crate) const JOIN_WAIT: Duration = Duration::from_secs(2);

/// Flags of the recorder: label caps and the backoff window.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Labels and backoff")]
pub struct RecorderArgs {
    /// A failing pod/image pair leaves `pullwatch_image_pull_backoff` after this long without a
    /// new attempt (kubelet's backoff caps at 5m, so a pair still retrying comes back sooner).
    #[arg(
        long,
        env = "PULLWATCH_BACKOFF_EXPIRY",
        default_value = "10m",
        value_name = "DURATION",
        value_parser = crate::flags::positive_duration
    )]
    pub backoff_expiry: Duration,

    /// Distinct `registry` label values kept; later ones are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_MAX_REGISTRIES",
        default_value_t = 100,
        value_name = "N",
        value_parser = crate::flags::positive_count
    )]
    pub max_registries: usize,

    /// Distinct `namespace` label values kept; later ones are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_MAX_NAMESPACES",
        default_value_t = 1000,
        value_name = "N",
        value_parser = crate::flags::positive_count
    )]
    pub max_namespaces: usize,

    /// Also export `pullwatch_image_pulls_by_image_total` with an `image` label (off by default:
    /// image names are high-cardinality).
    #[arg(long, env = "PULLWATCH_IMAGE_LABEL")]
    pub image_label: bool,

    /// With --image-label: distinct images kept before the rest are counted as `other`.
    #[arg(
        long,
        env = "PULLWATCH_IMAGE_LABEL_CAP",
        default_value_t = 100,
        value_name = "N",
        value_parser = crate::flags::positive_count
    )]
    pub image_label_cap: usize,
}

/// Limits and switches of the recorder.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// How long a failing pod/image pair stays in the backoff gauge without a new attempt.
    pub backoff_expiry: Duration,
    /// Distinct `registry` label values before overflow to `other`.
    pub max_registries: usize,
    /// Distinct `namespace` label values before overflow to `other`.
    pub max_namespaces: usize,
    /// Export `pullwatch_image_pulls_by_image_total` with at most this many images.
    pub image_label_cap: Option<usize>,
    /// The attempt sources enabled; the recorder decides from those running which one's
    /// attempts count ([`Authority`]).
    pub sources: Sources,
    /// With an observer (interposer, tap) as authority and the containerd source on: how long
    /// a successful attempt waits for its content record (its anatomy). `None`: no waiting.
    pub join_content: Option<Duration>,
}

impl RecorderConfig {
    /// The recorder's settings (its flags' values were checked as they were parsed) for an
    /// agent running `sources`: an observer's successes wait for containerd's content record
    /// when the containerd source runs too.
    pub fn from_args(args: &RecorderArgs, sources: Sources) -> Self {
        let observed = Authority::of(sources) == Authority::Observed;
        Self {
            backoff_expiry: args.backoff_expiry,
            max_registries: args.max_registries,
            max_namespaces: args.max_namespaces,
            image_label_cap: args.image_label.then_some(args.image_label_cap),
            sources,
            join_content: (observed && sources.containerd).then_some(JOIN_WAIT),
        }
    }
}

impl Default for RecorderConfig {
    /// Default limits; attempts from the interposer.
    fn default() -> Self {
        Self {
            backoff_expiry: crate::core::backoff::DEFAULT_EXPIRY,
            max_registries: 100,
            max_namespaces: 1000,
            image_label_cap: None,
            sources: Sources {
                interposer: true,
                ..Sources::default()
            },
            join_content: None,
        }
    }
}
