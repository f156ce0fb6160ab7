//! The one rule of whose attempts count: so no pull is counted twice, one source's attempts are
//! recorded per agent, decided from the sources that run (and decided again when one cannot
//! start). Only the recorder asks it.

use crate::core::attempt::Source;

/// The sources of attempts an agent runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    /// The CRI interposer.
    pub interposer: bool,
    /// The kernel tap.
    pub tap: bool,
    /// The Kubernetes API source.
    pub kube: bool,
    /// The containerd source.
    pub containerd: bool,
}

impl Sources {
    /// These sources without `source`.
    pub(crate) fn without(mut self, source: Source) -> Self {
        match source {
            Source::CriProxy => self.interposer = false,
            Source::CriTap => self.tap = false,
            Source::Kube => self.kube = false,
            Source::Containerd => self.containerd = false,
        }
        self
    }
}

/// Whose attempts count: the observers of CRI calls (the interposer and the tap: exact, and
/// never the same connection, as the tap does not follow pullwatch's own connections to the
/// runtime), else the Kubernetes API (failures and successes with kubelet's durations), else
/// containerd (passive successes). The others still feed their own families and the signals
/// around attempts (backoff, queue, progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Authority {
    /// The interposer's and the tap's attempts.
    Observed,
    /// The Kubernetes API source's.
    KubeApi,
    /// The containerd source's.
    Containerd,
    /// None: no source of attempts runs.
    Nobody,
}

impl Authority {
    /// The authority among `sources`.
    pub fn of(sources: Sources) -> Self {
        if sources.interposer || sources.tap {
            Authority::Observed
        } else if sources.kube {
            Authority::KubeApi
        } else if sources.containerd {
            Authority::Containerd
        } else {
            Authority::Nobody
        }
    }

    /// Whether attempts from `source` count.
    pub fn accepts(self, source: Source) -> bool {
        matches!(
            (self, source),
            (Authority::Observed, Source::CriProxy | Source::CriTap)
                | (Authority::KubeApi, Source::Kube)
                | (Authority::Containerd, Source::Containerd)
        )
    }

    /// Log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::Observed => "observed CRI calls",
            Authority::KubeApi => "kubernetes API",
            Authority::Containerd => "containerd",
            Authority::Nobody => "none",
        }
    }

    /// The authority stored as `v` by [`AuthorityCell`].
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Authority::Observed,
            1 => Authority::KubeApi,
            2 => Authority::Containerd,
            _ => Authority::Nobody,
        }
    }
}

/// The sources that run now and the authority they make, read without a lock on every attempt.
#[derive(Debug)]
pub(crate) struct AuthorityCell {
    sources: std::sync::Mutex<Sources>,
    now: std::sync::atomic::AtomicU8,
}

impl AuthorityCell {
    pub(crate) fn new(sources: Sources) -> Self {
        Self {
            sources: std::sync::Mutex::new(sources),
            now: std::sync::atomic::AtomicU8::new(Authority::of(sources) as u8),
        }
    }

    /// The authority now.
    pub(crate) fn get(&self) -> Authority {
        Authority::from_u8(self.now.load(std::sync::atomic::Ordering::Acquire))
    }

    /// `source` stopped counting as running; returns the authority decided again.
    pub(crate) fn without(&self, source: Source) -> Authority {
        let mut sources = self
            .sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *sources = sources.without(source);
        let authority = Authority::of(*sources);
        self.now
            .store(authority as u8, std::sync::atomic::Ordering::Release);
        authority
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observers_then_kube_then_containerd() {
        let all = Sources {
            interposer: true,
            tap: true,
            kube: true,
            containerd: true,
        };
        assert_eq!(Authority::of(all), Authority::Observed);
        let tap = all.without(Source::CriProxy);
        assert!(Authority::of(tap).accepts(Source::CriTap));
        assert!(!Authority::of(tap).accepts(Source::Kube));
        let kube = tap.without(Source::CriTap);
        assert_eq!(Authority::of(kube), Authority::KubeApi);
        let containerd = kube.without(Source::Kube);
        assert_eq!(Authority::of(containerd), Authority::Containerd);
        assert_eq!(Authority::of(Sources::default()), Authority::Nobody);
        let cell = AuthorityCell::new(tap);
        assert_eq!(cell.get(), Authority::Observed);
        assert_eq!(cell.without(Source::CriTap), Authority::KubeApi);
        assert_eq!(cell.get(), Authority::KubeApi);
        for a in [
            Authority::Observed,
            Authority::KubeApi,
            Authority::Containerd,
            Authority::Nobody,
        ] {
            assert_eq!(Authority::from_u8(a as u8), a);
        }
    }
}
