//! [`LiveKernels`]: which sandbox has a live kernel, and why the last one of a sandbox ended.
//!
//! Every back end keeps the same two maps: the live kernel of each sandbox (whatever the back
//! end needs to reach it) and, until the next kernel starts, the reason the last one ended,
//! which [`super::Runtime::ensure`] reports as [`KernelStart::previous_end`]. They are kept
//! here once, so that the back ends agree on when a reason is recorded, kept and reported.
//! The locks are never held across an `await`; a poisoned lock reads as empty, as no caller
//! could repair it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{KernelEnd, KernelStart};

/// The live kernels of one back end, by sandbox (a key the back end chooses), of type `L`.
pub(super) struct LiveKernels<L> {
    /// Per sandbox: its live kernel.
    live: Mutex<HashMap<String, Arc<L>>>,
    /// Per sandbox: why its last kernel ended, until the next one starts.
    ended: Mutex<HashMap<String, KernelEnd>>,
}

impl<L> LiveKernels<L> {
    /// No kernel, and no ended one.
    pub(super) fn new() -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(HashMap::new()),
        }
    }

    /// The live kernel of `sandbox`.
    pub(super) fn get(&self, sandbox: &str) -> Option<Arc<L>> {
        self.live
            .lock()
            .ok()
            .and_then(|live| live.get(sandbox).cloned())
    }

    /// Every live kernel, with its sandbox.
    pub(super) fn all(&self) -> Vec<(String, Arc<L>)> {
        self.live
            .lock()
            .map(|live| {
                live.iter()
                    .map(|(sandbox, kernel)| (sandbox.clone(), kernel.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records `kernel` as the live kernel of `sandbox`, which just started it: says so, with
    /// the reason its previous kernel ended (taken, so that it is reported once).
    pub(super) fn started(&self, sandbox: String, kernel: L) -> KernelStart {
        let previous_end = self.take_end(&sandbox);
        if let Ok(mut live) = self.live.lock() {
            live.insert(sandbox, Arc::new(kernel));
        }
        KernelStart {
            fresh: true,
            previous_end,
        }
    }

    /// Stops tracking the live kernel of `sandbox`; returns it, if there was one.
    pub(super) fn forget(&self, sandbox: &str) -> Option<Arc<L>> {
        self.live
            .lock()
            .ok()
            .and_then(|mut live| live.remove(sandbox))
    }

    /// Records why the kernel of `sandbox` ended, replacing an earlier reason.
    pub(super) fn ended(&self, sandbox: &str, end: KernelEnd) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.insert(sandbox.to_owned(), end);
        }
    }

    /// Records why the kernel of `sandbox` ended unless a reason is known already: a kernel
    /// found dead between cells is only a crash when nobody said why it went.
    pub(super) fn ended_unless_known(&self, sandbox: &str, end: KernelEnd) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.entry(sandbox.to_owned()).or_insert(end);
        }
    }

    /// Takes the reason the last kernel of `sandbox` ended, if one is recorded.
    pub(super) fn take_end(&self, sandbox: &str) -> Option<KernelEnd> {
        self.ended
            .lock()
            .ok()
            .and_then(|mut ended| ended.remove(sandbox))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_reports_the_previous_end_once() {
        let kernels = LiveKernels::new();
        assert_eq!(
            kernels.started("a".to_owned(), 1),
            KernelStart {
                fresh: true,
                previous_end: None,
            }
        );
        assert_eq!(kernels.get("a").as_deref(), Some(&1));
        assert_eq!(kernels.forget("a").as_deref(), Some(&1));
        assert!(kernels.get("a").is_none());
        kernels.ended("a", KernelEnd::Requested);
        assert_eq!(
            kernels.started("a".to_owned(), 2).previous_end,
            Some(KernelEnd::Requested)
        );
        assert_eq!(kernels.started("a".to_owned(), 3).previous_end, None);
        assert_eq!(kernels.get("a").as_deref(), Some(&3));
    }

    #[test]
    fn a_known_reason_is_kept_and_a_later_one_replaces_it() {
        let kernels = LiveKernels::<()>::new();
        kernels.ended("a", KernelEnd::Timeout);
        kernels.ended_unless_known("a", KernelEnd::Crashed);
        assert_eq!(kernels.take_end("a"), Some(KernelEnd::Timeout));
        assert_eq!(kernels.take_end("a"), None);
        kernels.ended_unless_known("a", KernelEnd::Crashed);
        kernels.ended("a", KernelEnd::Memory);
        assert_eq!(kernels.take_end("a"), Some(KernelEnd::Memory));
    }

    #[test]
    fn sandboxes_are_kept_apart() {
        let kernels = LiveKernels::new();
        kernels.started("a".to_owned(), 1);
        kernels.started("b".to_owned(), 2);
        kernels.ended("b", KernelEnd::Crashed);
        assert_eq!(kernels.take_end("a"), None);
        let mut all: Vec<(String, i32)> = kernels
            .all()
            .into_iter()
            .map(|(sandbox, kernel)| (sandbox, *kernel))
            .collect();
        all.sort();
        assert_eq!(all, [("a".to_owned(), 1), ("b".to_owned(), 2)]);
        assert_eq!(kernels.take_end("b"), Some(KernelEnd::Crashed));
    }
}
