//! Records refused mutations in the audit trail. Successful ones are recorded by the store in the
//! transaction of their change; a refusal has no such transaction, so this layer writes it once
//! the handler (or the `_system` guard below it) has answered with an error. Calls without a valid
//! token are not recorded: they have no caller, and recording them would let anyone fill the trail.
//! The target recorded is the one the request names in the fields the handler acts on (the
//! method table's target: parent and id for a Create), never an output-only field. A handler
//! that records its calls itself (Embed, TestInstance) claims the request's [`SelfAudited`] once
//! it has, and the call is not recorded twice.

use parking_lot::Mutex;
use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tonic::{Code, body::Body};

use super::{
    layer::{Middleware, Next},
    methods::{DecodedRequest, Method, MethodTable},
};
use crate::{
    domain::{
        audit::{SelfAudited, caller_label, subject_label},
        caller::Caller,
    },
    rpc::code_name,
    store::Store,
};

/// The longest target recorded; longer ones are cut (a caller chooses them).
const MAX_TARGET_CHARS: usize = 256;

/// One caller's refusals in the current window.
struct Window {
    started: Instant,
    recorded: u32,
    suppressed: u64,
}

/// Writes refusals to the audit trail: bounded values, at most `per_window` rows per caller and
/// window (a minute), then one summary row counting the rest, so that a flood is visible without
/// filling the disk. Shared by the layers that refuse writes (the body gate and this audit).
pub struct RefusalRecorder {
    store: Store,
    per_window: u32,
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

impl RefusalRecorder {
    /// A recorder whose summaries of ended windows are written within a few seconds by a task
    /// that ends when the recorder is dropped.
    pub fn new(store: Store, per_window: u32, window: Duration) -> Arc<Self> {
        let recorder = Arc::new(Self {
            store,
            per_window,
            window,
            windows: Mutex::new(HashMap::new()),
        });
        tokio::spawn(flush_ended_windows(Arc::downgrade(&recorder)));
        recorder
    }

    /// Records that `caller`'s call of `method` on `target` was refused with `code`.
    pub async fn record(&self, caller: &Caller, method: &str, target: &str, code: Code) {
        self.record_as(
            caller_label(caller),
            subject_label(caller).as_deref(),
            method,
            target,
            code,
        )
        .await;
    }

    /// Records a refusal by the caller labelled `label` (as [`caller_label`] writes it) for
    /// `subject`, the user it named to act for, if any: the edge records refused act-as calls
    /// this way, before there is a [`Caller`] for the user.
    pub async fn record_as(
        &self,
        label: String,
        subject: Option<&str>,
        method: &str,
        target: &str,
        code: Code,
    ) {
        let subject = subject.map(bounded);
        let (record, summary) = {
            let mut windows = self.lock();
            let now = Instant::now();
            let window = windows.entry(label.clone()).or_insert(Window {
                started: now,
                recorded: 0,
                suppressed: 0,
            });
            let mut summary = None;
            if now.duration_since(window.started) >= self.window {
                summary = (window.suppressed > 0).then_some(window.suppressed);
                *window = Window {
                    started: now,
                    recorded: 0,
                    suppressed: 0,
                };
            }
            let record = window.recorded < self.per_window;
            if record {
                window.recorded += 1;
            } else {
                window.suppressed += 1;
            }
            (record, summary)
        };
        if let Some(count) = summary {
            self.write_summary(&label, count).await;
        }
        if record {
            self.write(
                &label,
                subject.as_deref(),
                method,
                &bounded(target),
                code_name(code),
                "",
            )
            .await;
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<String, Window>> {
        self.windows.lock()
    }

    async fn write_summary(&self, label: &str, count: u64) {
        let detail = format!(
            "{count} further refusal(s) of {label} within {}s were counted, not recorded one by one",
            self.window.as_secs()
        );
        self.write(label, None, "(refusals)", "", "RATE_LIMITED", &detail)
            .await;
    }

    /// Inserts one row, retrying once; a row that still cannot be written is logged loudly
    /// (the call it records was refused anyway, so nothing was changed unaudited).
    async fn write(
        &self,
        label: &str,
        subject: Option<&str>,
        method: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        for attempt in 1..=2 {
            match self
                .store
                .record_refusal(label, subject, method, target, outcome, detail)
                .await
            {
                Ok(()) => return,
                Err(error) if attempt == 2 => {
                    tracing::error!(%error, method, "could not record a refused call in the audit trail");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Writes the summaries of windows that ended with suppressed refusals, every few seconds.
async fn flush_ended_windows(recorder: Weak<RefusalRecorder>) {
    loop {
        let interval = match recorder.upgrade() {
            Some(recorder) => recorder.window.min(Duration::from_secs(5)),
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(recorder) = recorder.upgrade() else {
            return;
        };
        let ended: Vec<(String, u64)> = {
            let mut windows = recorder.lock();
            let now = Instant::now();
            let ended: Vec<(String, u64)> = windows
                .iter()
                .filter(|(_, w)| now.duration_since(w.started) >= recorder.window)
                .filter(|(_, w)| w.suppressed > 0)
                .map(|(label, w)| (label.clone(), w.suppressed))
                .collect();
            windows.retain(|_, w| now.duration_since(w.started) < recorder.window);
            ended
        };
        for (label, count) in ended {
            recorder.write_summary(&label, count).await;
        }
    }
}

/// A target as the trail stores it: at most [`MAX_TARGET_CHARS`] characters, control
/// characters replaced, a cut marked with `…`.
fn bounded(target: &str) -> String {
    let mut out: String = target
        .chars()
        .take(MAX_TARGET_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if target.chars().count() > MAX_TARGET_CHARS {
        out.push('…');
    }
    out
}

/// Writes refused mutations to the audit trail.
pub struct RefusalAudit {
    methods: Arc<MethodTable>,
    recorder: Arc<RefusalRecorder>,
}

impl RefusalAudit {
    pub fn new(methods: Arc<MethodTable>, recorder: Arc<RefusalRecorder>) -> Self {
        Self { methods, recorder }
    }
}

impl Middleware for RefusalAudit {
    fn call(
        self: Arc<Self>,
        request: Request<Body>,
        next: Next,
    ) -> BoxFuture<'static, Response<Body>> {
        let method = match self.methods.of(&request) {
            Method::Ours(facts) if !facts.read_only => facts,
            _ => return Box::pin(next.run(request)),
        };
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            return Box::pin(next.run(request));
        };
        // The body gate decoded the message; a malformed one has no target.
        let target = request
            .extensions()
            .get::<DecodedRequest>()
            .map(|DecodedRequest(message)| method.requested_target(message))
            .unwrap_or_default();
        let self_audited = SelfAudited::default();
        let mut request = request;
        request.extensions_mut().insert(self_audited.clone());
        Box::pin(async move {
            let response = next.run(request).await;
            if !self_audited.claimed()
                && let Some(code) = response
                    .headers()
                    .get("grpc-status")
                    .map(|v| Code::from_bytes(v.as_bytes()))
                && code != Code::Ok
            {
                self.recorder
                    .record(&caller, &method.short_name, &target, code)
                    .await;
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_bounded_and_printable() {
        assert_eq!(bounded("users/a/instances/b"), "users/a/instances/b");
        let long = "x".repeat(5000);
        let cut = bounded(&long);
        assert_eq!(cut.chars().count(), MAX_TARGET_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("a\nb"), "a?b");
    }
}
