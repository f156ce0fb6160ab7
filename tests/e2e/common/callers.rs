//! CRI callers: tonic (ours, in process), and callers we did not write: Python's grpcio and
//! grpc-go (Debian's golang-google-grpc-dev, built here offline), each a small program under
//! `tests/callers/` that makes one unary call with raw request bytes and prints the outcome as
//! JSON. They send what real callers send: a socket path or `localhost` as `:authority`,
//! Huffman-coded headers, their own settings.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// A caller and how it sets `:authority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// tonic, as `pullwatch pull` and the tests use it (authority `localhost`).
    Tonic,
    /// grpcio with its default for `unix:` targets (the percent-encoded socket path).
    GrpcioDefault,
    /// grpcio with `grpc.default_authority = localhost`.
    GrpcioLocalhost,
    /// grpc-go dialing the bare socket path with a unix dialer (kubelet before #123463).
    GrpcGoBarePath,
    /// grpc-go with `WithAuthority("localhost")` (today's kubelet).
    GrpcGoLocalhost,
}

impl Caller {
    /// Every caller.
    pub const ALL: [Caller; 5] = [
        Caller::Tonic,
        Caller::GrpcioDefault,
        Caller::GrpcioLocalhost,
        Caller::GrpcGoBarePath,
        Caller::GrpcGoLocalhost,
    ];

    /// A short name (used as pod name in the tests).
    pub fn name(self) -> &'static str {
        match self {
            Caller::Tonic => "tonic",
            Caller::GrpcioDefault => "grpcio-default",
            Caller::GrpcioLocalhost => "grpcio-localhost",
            Caller::GrpcGoBarePath => "grpc-go-bare-path",
            Caller::GrpcGoLocalhost => "grpc-go-localhost",
        }
    }

    fn command(self) -> Command {
        let authority = match self {
            Caller::GrpcioLocalhost | Caller::GrpcGoLocalhost => "localhost",
            _ => "default",
        };
        let mut c = match self {
            Caller::GrpcioDefault | Caller::GrpcioLocalhost => {
                let mut c = Command::new(super::tool("python3"));
                c.arg(callers_dir().join("grpc_caller.py"));
                c
            }
            Caller::GrpcGoBarePath | Caller::GrpcGoLocalhost | Caller::Tonic => {
                Command::new(grpc_go())
            }
        };
        c.args(["--authority", authority]);
        c
    }
}

/// What a caller got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// gRPC status code (0: OK).
    pub code: i64,
    /// Status message.
    pub message: String,
    /// Response message, hex.
    pub response: String,
}

/// One call.
#[derive(Debug, Clone, Default)]
pub struct Call<'a> {
    /// Full method path.
    pub method: &'a str,
    /// Request message (not framed).
    pub request: Vec<u8>,
    /// Deadline.
    pub timeout: Option<Duration>,
    /// Cancel after this long.
    pub cancel_after: Option<Duration>,
    /// W3C traceparent to send.
    pub traceparent: Option<&'a str>,
}

fn callers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/callers")
}

/// The grpc-go caller, built into the target directory once per version of its source.
fn grpc_go() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = callers_dir().join("grpc-go/main.go");
        let text = std::fs::read(&src).expect("tests/callers/grpc-go/main.go");
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-callers");
        std::fs::create_dir_all(&target).unwrap();
        let bin = target.join(format!(
            "grpc-go-caller-{}",
            &hex::encode(Sha256::digest(&text))[..16]
        ));
        if bin.exists() {
            return bin;
        }
        let tmp = target.join(format!("grpc-go-caller.tmp-{}", std::process::id()));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&tmp)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", target.join("go-cache"))
            .output()
            .expect("go (Debian golang-go; scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "building the grpc-go caller: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &bin).unwrap();
        bin
    })
    .clone()
}

/// Makes `call` with `caller` on the socket `sock`.
pub async fn call(caller: Caller, sock: &Path, call: &Call<'_>) -> Reply {
    if caller == Caller::Tonic {
        return tonic_call(sock, call).await;
    }
    let mut cmd = caller.command();
    cmd.arg("--socket")
        .arg(sock)
        .args(["--method", call.method])
        .args(["--request", &hex::encode(&call.request)])
        .args([
            "--timeout-ms",
            &call
                .timeout
                .unwrap_or(Duration::from_secs(60))
                .as_millis()
                .to_string(),
        ]);
    if let Some(c) = call.cancel_after {
        cmd.args(["--cancel-after-ms", &c.as_millis().to_string()]);
    }
    if let Some(t) = call.traceparent {
        cmd.args(["--traceparent", t]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run the caller");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: {stdout}\n{}",
            caller.name(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Reply {
        code: v["code"].as_i64().unwrap(),
        message: v["message"].as_str().unwrap().to_string(),
        response: v["response"].as_str().unwrap().to_string(),
    }
}

/// The call made with pullwatch's own tonic client and the generated CRI types.
async fn tonic_call(sock: &Path, call: &Call<'_>) -> Reply {
    use prost::Message;
    use pullwatch::cri::{ImageStatusRequest, PullImageRequest, VersionRequest};
    fn request<T>(msg: T, call: &Call<'_>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(call.timeout.unwrap_or(Duration::from_secs(60)));
        if let Some(t) = call.traceparent {
            r.metadata_mut().insert("traceparent", t.parse().unwrap());
        }
        r
    }
    let reply = |r: Result<Vec<u8>, tonic::Status>| match r {
        Ok(bytes) => Reply {
            code: 0,
            message: String::new(),
            response: hex::encode(bytes),
        },
        Err(s) => Reply {
            code: s.code() as i64,
            message: s.message().to_string(),
            response: String::new(),
        },
    };
    let mut c = match pullwatch::cri::client::CriClient::connect(sock, Duration::from_secs(5)).await
    {
        Ok(c) => c,
        Err(e) => return reply(Err(tonic::Status::unavailable(e.to_string()))),
    };
    let bytes = &call.request[..];
    let fut = async {
        match call.method {
            "/runtime.v1.RuntimeService/Version" => c
                .runtime
                .version(request(VersionRequest::decode(bytes).unwrap(), call))
                .await
                .map(|r| r.into_inner().encode_to_vec()),
            "/runtime.v1.ImageService/ImageStatus" => c
                .images
                .image_status(request(ImageStatusRequest::decode(bytes).unwrap(), call))
                .await
                .map(|r| r.into_inner().encode_to_vec()),
            "/runtime.v1.ImageService/PullImage" => c
                .images
                .pull_image(request(PullImageRequest::decode(bytes).unwrap(), call))
                .await
                .map(|r| r.into_inner().encode_to_vec()),
            other => panic!("the tonic caller has no type for {other}"),
        }
    };
    match call.cancel_after {
        // Dropping the call's future resets its stream (CANCEL), as kubelet's context cancel does.
        Some(after) => match tokio::time::timeout(after, fut).await {
            Ok(r) => reply(r),
            Err(_) => reply(Err(tonic::Status::cancelled("canceled by the caller"))),
        },
        None => reply(fut.await),
    }
}

/// A caller in another process that keeps one connection open across many calls, as kubelet
/// keeps its connection to the runtime for days: grpc-go or grpcio in `--session` mode.
pub struct Session {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    replies: std::sync::mpsc::Receiver<serde_json::Value>,
    early: std::collections::HashMap<u64, serde_json::Value>,
    next: u64,
    pub caller: Caller,
}

/// What one call of a [`Session`] got, and how long it took as the caller measured it.
#[derive(Debug, Clone)]
pub struct Timed {
    pub reply: Reply,
    pub elapsed: Duration,
}

impl Session {
    /// Opens `caller`'s connection to `sock` (grpc-go or grpcio only).
    pub fn open(caller: Caller, sock: &Path) -> Self {
        use std::io::BufRead;
        assert!(caller != Caller::Tonic, "a session is another process");
        let mut child = caller
            .command()
            .arg("--socket")
            .arg(sock)
            .arg("--session")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the caller");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            replies: rx,
            early: Default::default(),
            next: 1,
            caller,
        }
    }

    /// Starts `call`; its id.
    pub fn start(&mut self, call: &Call<'_>) -> u64 {
        use std::io::Write;
        let id = self.next;
        self.next += 1;
        let line = serde_json::json!({
            "id": id,
            "method": call.method,
            "request": hex::encode(&call.request),
            "timeout_ms": call.timeout.unwrap_or(Duration::from_secs(60)).as_millis() as u64,
        });
        let stdin = self.stdin.as_mut().expect("session open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        id
    }

    /// Waits for call `id` (at most 120 s).
    pub fn wait(&mut self, id: u64) -> Timed {
        let v = match self.early.remove(&id) {
            Some(v) => v,
            None => loop {
                let v = self
                    .replies
                    .recv_timeout(Duration::from_secs(120))
                    .unwrap_or_else(|e| {
                        panic!("{}: no answer to call {id}: {e}", self.caller.name())
                    });
                let got = v["id"].as_u64().unwrap_or(0);
                if got == id {
                    break v;
                }
                self.early.insert(got, v);
            },
        };
        Timed {
            reply: Reply {
                code: v["code"].as_i64().unwrap_or(-1),
                message: v["message"].as_str().unwrap_or_default().to_string(),
                response: v["response"].as_str().unwrap_or_default().to_string(),
            },
            elapsed: Duration::from_secs_f64(v["ms"].as_f64().unwrap_or(0.0) / 1000.0),
        }
    }

    /// Makes `call` and waits for it.
    pub fn call(&mut self, call: &Call<'_>) -> Timed {
        let id = self.start(call);
        self.wait(id)
    }

    /// The caller's process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
