//! A scripted Kubernetes API server of our own, on loopback, for the `kube` source: it serves
//! `/api/v1/pods` and `/api/v1/events` lists and watch streams the way the real API server does
//! (resourceVersions, field selectors, watch-cache replay from a resourceVersion, BOOKMARKs,
//! `410 Gone` as an ERROR watch event), and the test scripts what happens: objects applied and
//! deleted, watches expired or cut, the whole server down. It also takes Events written to
//! `/api/v1/namespaces/NS/events` (POST creates, PATCH merges), as pullwatch's pod events do.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, std::io::Error>;

/// The two resources the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    Events,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Pods => "/api/v1/pods",
            Kind::Events => "/api/v1/events",
        }
    }
    fn list_kind(self) -> &'static str {
        match self {
            Kind::Pods => "PodList",
            Kind::Events => "EventList",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::Pods => "Pod",
            Kind::Events => "Event",
        }
    }
}

struct Watcher {
    selector: String,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// What the server sent clients of one resource: bytes and objects, lists and watches alike.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub objects: u64,
}

#[derive(Default)]
struct Resource {
    /// uid -> object
    items: BTreeMap<String, Value>,
    /// (resourceVersion, type, object): the watch cache.
    history: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410.
    compacted_below: u64,
    watchers: Vec<Watcher>,
}

#[derive(Default)]
struct State {
    rv: u64,
    res: BTreeMap<Kind, Resource>,
    requests: Vec<String>,
    down: bool,
    /// The next this-many requests get `429 Too Many Requests` (API priority and fairness).
    throttle: usize,
    /// Events written by clients: (namespace, name) -> object, and each write in order.
    written: BTreeMap<(String, String), Value>,
    writes: Vec<(String, String)>,
    /// The next this-many writes get `500` (an API server failing writes).
    fail_writes: usize,
    /// Sent per resource.
    sent: BTreeMap<Kind, Sent>,
}

#[derive(Clone)]
pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

/// Value at a dotted path; the field selector `source` means `source.component`, as on the API
/// server.
fn field<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let path = if path == "source" {
        "source.component"
    } else {
        path
    };
    path.split('.').try_fold(obj, |v, k| v.get(k))
}

fn matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        field(obj, k.trim_end_matches('=')).and_then(Value::as_str) == Some(v)
    })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn gone() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "too old resource version", "reason": "Expired", "code": 410})
}

impl KubeApi {
    /// Starts the server on 127.0.0.1 (random port) in the current tokio runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Self {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
        };
        {
            let mut st = api.state.lock().unwrap();
            st.rv = 1000;
            st.res.insert(Kind::Pods, Resource::default());
            st.res.insert(Kind::Events, Resource::default());
        }
        let server = api.clone();
        super::serve_http1(listener, move |req| {
            let s = server.clone();
            async move { s.handle(req).await }
        });
        api
    }

    /// Writes a kubeconfig pointing at this server (token auth, plain HTTP) into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let p = dir.join(format!("kubeconfig-{}", self.addr.port()));
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
                 users:\n- name: agent\n  user:\n    token: test-token\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: agent\n\
                 current-context: test\n",
                self.addr
            ),
        )
        .unwrap();
        p
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
        let write = matches!(*req.method(), http::Method::POST | http::Method::PATCH);
        if write {
            let (method, path) = (req.method().to_string(), req.uri().path().to_string());
            let body = req
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?;
            let body: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null);
            return self.write_event(&method, &path, body);
        }
        let mut st = self.state.lock().unwrap();
        st.requests.push(format!("{} {}", req.method(), req.uri()));
        if st.down {
            // Like a dead API server behind a load balancer: the connection closes unanswered.
            return Err(std::io::Error::other("apiserver down"));
        }
        if st.throttle > 0 {
            st.throttle -= 1;
            let mut r = full(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests",
                       "message": "too many requests, please try again later", "code": 429}),
            );
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            return Ok(r);
        }
        Ok(self.route(&mut st, req))
    }

    /// POST `/api/v1/namespaces/NS/events` or PATCH `…/events/NAME` (a JSON merge patch).
    fn write_event(
        &self,
        method: &str,
        path: &str,
        body: Value,
    ) -> Result<Response<Body>, std::io::Error> {
        let mut st = self.state.lock().unwrap();
        st.requests.push(format!("{method} {path}"));
        if st.down {
            return Err(std::io::Error::other("apiserver down"));
        }
        let status = |code: u16, reason: &str| {
            full(
                StatusCode::from_u16(code).unwrap(),
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": reason, "code": code}),
            )
        };
        if st.throttle > 0 {
            st.throttle -= 1;
            return Ok(status(429, "TooManyRequests"));
        }
        if st.fail_writes > 0 {
            st.fail_writes -= 1;
            return Ok(status(500, "InternalError"));
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (ns, name) = match (method, parts.as_slice()) {
            ("POST", ["api", "v1", "namespaces", ns, "events"]) => (
                ns.to_string(),
                body["metadata"]["name"].as_str().unwrap_or("").to_string(),
            ),
            ("PATCH", ["api", "v1", "namespaces", ns, "events", name]) => {
                (ns.to_string(), name.to_string())
            }
            _ => return Ok(status(404, "NotFound")),
        };
        let key = (ns, name.clone());
        let object = if method == "POST" {
            if st.written.contains_key(&key) {
                return Ok(status(409, "AlreadyExists"));
            }
            body
        } else {
            let Some(mut old) = st.written.get(&key).cloned() else {
                return Ok(status(404, "NotFound"));
            };
            if let (Some(old), Some(patch)) = (old.as_object_mut(), body.as_object()) {
                for (k, v) in patch {
                    old.insert(k.clone(), v.clone());
                }
            }
            old
        };
        st.written.insert(key, object.clone());
        st.writes.push((method.to_string(), name));
        Ok(full(
            if method == "POST" {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            object,
        ))
    }

    /// Events clients wrote, as they stand now.
    pub fn written_events(&self) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .written
            .values()
            .cloned()
            .collect()
    }

    /// Each event write in order: (`POST`|`PATCH`, event name).
    pub fn event_writes(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Answers the next `n` writes with `500`.
    pub fn fail_writes(&self, n: usize) {
        self.state.lock().unwrap().fail_writes = n;
    }

    fn route(&self, st: &mut State, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (kind, namespace) = match parts.as_slice() {
            ["api", "v1", "pods"] => (Kind::Pods, None),
            ["api", "v1", "events"] => (Kind::Events, None),
            ["api", "v1", "namespaces", ns, "events"] => (Kind::Events, Some(ns.to_string())),
            _ => {
                return full(
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "code": 404}),
                );
            }
        };
        let q = query(req.uri());
        let mut selector = q.get("fieldSelector").cloned().unwrap_or_default();
        if let Some(ns) = namespace {
            selector = format!("metadata.namespace={ns},{selector}");
        }
        let rv_now = st.rv;
        let res = st.res.get_mut(&kind).unwrap();
        if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(rv_now);
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            let mut sent = Sent::default();
            if from < res.compacted_below {
                let _ = tx.send(line("ERROR", &gone()));
                drop(tx);
            } else {
                for (rv, t, obj) in &res.history {
                    if *rv > from && matches(obj, &selector) {
                        let l = line(t, obj);
                        sent.bytes += l.len() as u64;
                        sent.objects += 1;
                        let _ = tx.send(l);
                    }
                }
                res.watchers.push(Watcher { selector, tx });
            }
            let total = st.sent.entry(kind).or_default();
            total.bytes += sent.bytes;
            total.objects += sent.objects;
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        let items: Vec<&Value> = res
            .items
            .values()
            .filter(|o| matches(o, &selector))
            .collect();
        let objects = items.len() as u64;
        let body = json!({"kind": kind.list_kind(), "apiVersion": "v1",
                   "metadata": {"resourceVersion": rv_now.to_string()}, "items": items});
        let total = st.sent.entry(kind).or_default();
        total.bytes += body.to_string().len() as u64;
        total.objects += objects;
        full(StatusCode::OK, body)
    }

    fn publish(&self, kind: Kind, t: &'static str, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["kind"] = json!(kind.kind());
        obj["apiVersion"] = json!("v1");
        let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
        let res = st.res.get_mut(&kind).unwrap();
        if t == "DELETED" {
            res.items.remove(&uid);
        } else {
            res.items.insert(uid, obj.clone());
        }
        res.history.push((rv, t, obj.clone()));
        let mut sent = Sent::default();
        res.watchers.retain(|w| {
            if !matches(&obj, &w.selector) {
                return true;
            }
            let l = line(t, &obj);
            sent.bytes += l.len() as u64;
            sent.objects += 1;
            w.tx.send(l).is_ok()
        });
        let total = st.sent.entry(kind).or_default();
        total.bytes += sent.bytes;
        total.objects += sent.objects;
    }

    /// Creates or updates an object (ADDED the first time, MODIFIED after).
    pub fn apply(&self, kind: Kind, obj: Value) {
        let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
        let exists = self.state.lock().unwrap().res[&kind]
            .items
            .contains_key(&uid);
        self.publish(kind, if exists { "MODIFIED" } else { "ADDED" }, obj);
    }

    /// Deletes an object.
    pub fn delete(&self, kind: Kind, uid: &str) {
        let obj = self.state.lock().unwrap().res[&kind]
            .items
            .get(uid)
            .cloned();
        if let Some(obj) = obj {
            self.publish(kind, "DELETED", obj);
        }
    }

    /// Puts an object in place without telling any watch, as if it changed while the watch was
    /// down (only a relist sees it).
    pub fn apply_unseen(&self, kind: Kind, mut obj: Value) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let uid = obj["metadata"]["uid"].as_str().unwrap().to_string();
        st.res.get_mut(&kind).unwrap().items.insert(uid, obj);
    }

    /// Removes an object without telling any watch.
    pub fn delete_unseen(&self, kind: Kind, uid: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        st.res.get_mut(&kind).unwrap().items.remove(uid);
    }

    /// Compacts the watch cache: open watches get `410 Gone` and end; watches resuming from an
    /// older resourceVersion get 410 too, so the client must relist.
    pub fn expire_watches(&self, kind: Kind) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let res = st.res.get_mut(&kind).unwrap();
        res.compacted_below = rv;
        res.history.clear();
        for w in res.watchers.drain(..) {
            let _ = w.tx.send(line("ERROR", &gone()));
        }
    }

    /// Ends every open watch of `kind` without a word (a load balancer timeout).
    pub fn cut_watches(&self, kind: Kind) {
        self.state
            .lock()
            .unwrap()
            .res
            .get_mut(&kind)
            .unwrap()
            .watchers
            .clear();
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch of `kind`.
    pub fn bookmark(&self, kind: Kind) -> u64 {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let obj = json!({"kind": kind.kind(), "apiVersion": "v1",
                         "metadata": {"resourceVersion": rv.to_string()}});
        for w in &st.res[&kind].watchers {
            let _ = w.tx.send(line("BOOKMARK", &obj));
        }
        rv
    }

    /// Takes the whole server down (connections close unanswered, open watches cut) or back up.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state.lock().unwrap();
        st.down = down;
        if down {
            for r in st.res.values_mut() {
                r.watchers.clear();
            }
        }
    }

    /// Answers the next `n` requests with `429 Too Many Requests` and `Retry-After: 1`.
    pub fn throttle(&self, n: usize) {
        self.state.lock().unwrap().throttle = n;
    }

    /// What the server has sent clients about `kind` so far.
    pub fn sent(&self, kind: Kind) -> Sent {
        self.state
            .lock()
            .unwrap()
            .sent
            .get(&kind)
            .copied()
            .unwrap_or_default()
    }

    /// Forgets the watch cache of `kind` (its objects stay): a long stream stays small.
    pub fn trim_history(&self, kind: Kind) {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv;
        let res = st.res.get_mut(&kind).unwrap();
        res.history.clear();
        res.compacted_below = rv;
    }

    /// Open watches of `kind`.
    pub fn watchers(&self, kind: Kind) -> usize {
        self.state.lock().unwrap().res[&kind].watchers.len()
    }

    /// Every request so far, as `METHOD URI`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Waits (up to 20 s) until `kind` has `n` open watches.
    pub async fn wait_for_watchers(&self, kind: Kind, n: usize) {
        super::wait::until_async(
            Duration::from_secs(20),
            Duration::from_millis(20),
            || std::future::ready(self.watchers(kind) >= n),
            || {
                format!(
                    "no watch of {kind:?} opened; requests: {:#?}",
                    self.requests()
                )
            },
        )
        .await;
    }
}

/// RFC 3339 time `secs` from now (negative: in the past), second resolution like kubelet's.
pub fn ts(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = now + secs;
    let days = t.div_euclid(86_400);
    let rem = t.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A pod on `node` with one container `app` running `image`; `state` is the container's
/// `state` object (`None`: no status yet, as right after scheduling).
pub fn pod(
    ns: &str,
    name: &str,
    node: &str,
    image: &str,
    created_secs_ago: i64,
    state: Option<Value>,
) -> Value {
    let mut p = json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{ns}-{name}"),
                     "creationTimestamp": ts(-created_secs_ago)},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": image}]},
        "status": {"phase": "Pending"}
    });
    if let Some(state) = state {
        p["status"]["containerStatuses"] = json!([{
            "name": "app", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "started": false, "state": state
        }]);
    }
    p
}

/// The `state` of a container waiting with `reason` and `message`.
pub fn waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

/// A running container's `state`.
pub fn running() -> Value {
    json!({"running": {"startedAt": ts(0)}})
}

/// A kubelet Event (core/v1, as kubelet's recorder writes it) about container `app` of pod
/// `ns/name` on `node`, seen `count` times between the two times (seconds ago).
pub fn kubelet_event(
    uid: &str,
    (ns, pod_name, node): (&str, &str, &str),
    (reason, message): (&str, &str),
    count: u32,
    (first_secs_ago, last_secs_ago): (i64, i64),
) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": format!("{pod_name}.{uid}"), "uid": uid,
                     "creationTimestamp": ts(-first_secs_ago)},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod_name,
                           "uid": format!("uid-{ns}-{pod_name}"), "apiVersion": "v1",
                           "fieldPath": "spec.containers{app}"},
        "reason": reason,
        "message": message,
        "source": {"component": "kubelet", "host": node},
        "firstTimestamp": ts(-first_secs_ago),
        "lastTimestamp": ts(-last_secs_ago),
        "count": count,
        "type": if reason == "Failed" { "Warning" } else { "Normal" },
        "eventTime": null,
        "reportingComponent": "kubelet",
        "reportingInstance": node
    })
}
