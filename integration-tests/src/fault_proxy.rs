//! A fault-injecting reverse proxy for the end-to-end tests: it listens on a free loopback
//! port, forwards every request to a real `jewel-server`, and answers some of them itself
//! the way the things in front of a real deployment do when they misbehave.
//!
//! A client mounted on [`FaultProxy::url`] instead of the server's URL then sees, by rule:
//!
//! - [`Fault::Throttle`]: API Gateway's throttling answer, `429 {"message":"Too Many
//!   Requests"}` (that body is JSON but not the service's error shape), optionally with
//!   `Retry-After`; the service never sees the request.
//! - [`Fault::Unavailable`]: `503` with an HTML page (a load balancer with no healthy
//!   target, or one draining for maintenance), optionally with `Retry-After`; the service
//!   never sees the request.
//! - [`Fault::TooLarge`]: `413` with an HTML page (a proxy's body limit, not the service's
//!   own refusal); the service never sees the request.
//! - [`Fault::TornAnswer`]: the request is forwarded (so the service **did** it) and the
//!   answer comes back `200` with only the first half of its body: not JSON.
//! - [`Fault::DropBefore`]: the connection is closed before forwarding; no answer, and the
//!   service never saw it.
//! - [`Fault::DropAfter`]: the request is forwarded and the service's answer read, then the
//!   connection is closed: the change is committed but the client never hears so. This is
//!   the case that tests idempotence (a retried create or move must not happen twice).
//! - [`Fault::Slow`]: forwarded, and the answer held back for a while.
//! - [`Fault::GatewayError`]: API Gateway's `500 {"message":"Internal Server Error"}` (the
//!   Lambda crashed or timed out before acting); the service never sees the request.
//! - [`Fault::AnswerOverflow`]: forwarded (the service **did** it), then the same `500`
//!   instead of the answer: what API Gateway says when a Lambda's answer exceeds 6 MB, or
//!   the function timed out after committing.
//!
//! **Which requests**: a rule applies to a [`Scope`]. The default scope,
//! [`Scope::Changes`], is every changing request of the API (POST, PUT, PATCH, DELETE under
//! `/api/v1`) and nothing else: reads, block transfers (`/blob/...`) and the devices'
//! long-polls (`GET /api/v1/devices/{id}/poll`) pass through. [`Scope::ChangesAndBlocks`]
//! adds block PUTs; [`Scope::All`] is every request, long-polls included (a service that
//! throttles everything).
//!
//! **Deterministic**: which requests are hit is drawn from a seeded generator (splitmix64),
//! one draw per request in scope, so a plan with the same seed hits the same positions of
//! the request sequence. The rules are switched at run time ([`FaultProxy::set`],
//! [`FaultProxy::set_for`] for a plan that lapses on its own, [`FaultProxy::clear`]), and
//! [`FaultProxy::stats`] counts what was seen, forwarded and faulted, for assertions that
//! the faults did happen (a fault test whose faults never fired proves nothing).
//!
//! **Pass-through**: what is not faulted is streamed both ways as it comes, with no timeout
//! of the proxy's own (the client's timeouts govern), so a long-poll that waits half a
//! minute for a change is not cut short.
//!
//! It runs on its own tokio runtime (the mount tests are synchronous) and stops on drop.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

/// What the proxy does to a request a rule picks.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `429 {"message":"Too Many Requests"}`, with `Retry-After: <secs>` if given.
    Throttle { retry_after: Option<u32> },
    /// `503` with an HTML body, with `Retry-After: <secs>` if given.
    Unavailable { retry_after: Option<u32> },
    /// `413` with an HTML body.
    TooLarge,
    /// Forwarded; the answer is `200` with the first half of the service's body.
    TornAnswer,
    /// The connection closed before forwarding.
    DropBefore,
    /// Forwarded, the answer read, then the connection closed without it.
    DropAfter,
    /// Forwarded; the answer is held back this long.
    Slow(Duration),
    /// `500 {"message":"Internal Server Error"}` from API Gateway, not forwarded.
    GatewayError,
    /// Forwarded, then API Gateway's `500` instead of the service's answer.
    AnswerOverflow,
}

impl Fault {
    /// A short name, the key of [`Stats::faulted`].
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Throttle { .. } => "throttle",
            Fault::Unavailable { .. } => "unavailable",
            Fault::TooLarge => "too_large",
            Fault::TornAnswer => "torn_answer",
            Fault::DropBefore => "drop_before",
            Fault::DropAfter => "drop_after",
            Fault::Slow(_) => "slow",
            Fault::GatewayError => "gateway_error",
            Fault::AnswerOverflow => "answer_overflow",
        }
    }
}

/// Which requests a rule may hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// POST, PUT, PATCH and DELETE under `/api/v1`.
    Changes,
    /// [`Scope::Changes`] and block PUTs (`PUT /blob/...`).
    ChangesAndBlocks,
    /// Every request, long-polls included.
    All,
}

/// What kind of request a request is (for scopes and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Change,
    BlockPut,
    Poll,
    Other,
}

impl Scope {
    fn covers(self, kind: Kind) -> bool {
        match self {
            Scope::Changes => kind == Kind::Change,
            Scope::ChangesAndBlocks => matches!(kind, Kind::Change | Kind::BlockPut),
            Scope::All => true,
        }
    }
}

fn kind_of(method: &hyper::Method, path: &str) -> Kind {
    use hyper::Method;
    let api = path
        .strip_prefix(jewel_wire::API_PREFIX)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    match api {
        Some(rest) => {
            let changing = matches!(
                *method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            );
            let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
            if changing {
                Kind::Change
            } else if *method == Method::GET && matches!(segments[..], ["devices", _, "poll"]) {
                Kind::Poll
            } else {
                Kind::Other
            }
        }
        None if *method == Method::PUT && path.starts_with("/blob/") => Kind::BlockPut,
        None => Kind::Other,
    }
}

/// One rule: hit this share of the requests in `scope` with `fault`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub fault: Fault,
    pub scope: Scope,
    /// Share of the requests in scope, 0.0 to 1.0.
    pub rate: f64,
}

/// A set of rules and the seed of their draws. Each request in scope of at least one rule
/// takes one draw `u` in [0, 1); the rules split that interval in order (the first takes
/// `[0, rate)`, the next the following `rate`, ...), so the shares add up: three rules at
/// 1/9 each hit a third of the requests in all.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub rules: Vec<Rule>,
}

impl Plan {
    pub fn new(seed: u64) -> Plan {
        Plan {
            seed,
            rules: Vec::new(),
        }
    }

    /// Adds a rule.
    pub fn with(mut self, fault: Fault, scope: Scope, rate: f64) -> Plan {
        assert!((0.0..=1.0).contains(&rate), "a rate is a share, got {rate}");
        self.rules.push(Rule { fault, scope, rate });
        let total: f64 = self.rules.iter().map(|r| r.rate).sum();
        assert!(total <= 1.0 + 1e-9, "rates add up to {total} > 1");
        self
    }
}

/// What the proxy saw so far (since it started; [`FaultProxy::set`] does not reset it).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Every request.
    pub seen: u64,
    /// Changing API requests.
    pub changes: u64,
    /// Long-polls.
    pub polls: u64,
    /// Requests sent on to the service (faulted ones that forward included).
    pub forwarded: u64,
    /// Faulted requests by [`Fault::name`].
    pub faulted: BTreeMap<&'static str, u64>,
    /// Faulted requests by fault and route, `"<fault> <METHOD> <path>"` with the numbers
    /// in the path written `{id}` (`"drop_after POST /api/v1/nodes/{id}/move"`), so a test
    /// can check that the requests it means to hit were hit.
    pub routes: BTreeMap<String, u64>,
    /// Every request by route, `"<METHOD> <path>"` with ids written `{id}` as in `routes`
    /// (what a test of request counts checks).
    pub by_route: BTreeMap<String, u64>,
}

impl Stats {
    /// Faulted requests of one kind.
    pub fn faulted(&self, name: &str) -> u64 {
        self.faulted.get(name).copied().unwrap_or(0)
    }
    /// Requests of one route, faulted or not (`"POST /api/v1/blocks/urls"`).
    pub fn requests(&self, route: &str) -> u64 {
        self.by_route.get(route).copied().unwrap_or(0)
    }
    /// Faulted requests in all.
    pub fn faulted_total(&self) -> u64 {
        self.faulted.values().sum()
    }
    /// Faulted requests, any fault, of one route (`"POST /api/v1/nodes/{id}/move"`).
    pub fn faulted_route(&self, route: &str) -> u64 {
        self.routes
            .iter()
            .filter(|(k, _)| k.split_once(' ').is_some_and(|(_, r)| r == route))
            .map(|(_, n)| n)
            .sum()
    }
}

struct State {
    plan: Option<Plan>,
    until: Option<Instant>,
    rng: u64,
    stats: Stats,
}

impl State {
    /// Counts a request and picks the fault for it, if any.
    fn decide(&mut self, kind: Kind, method: &hyper::Method, path: &str) -> Option<Fault> {
        self.stats.seen += 1;
        *self
            .stats
            .by_route
            .entry(format!("{method} {}", route_of(path)))
            .or_default() += 1;
        match kind {
            Kind::Change => self.stats.changes += 1,
            Kind::Poll => self.stats.polls += 1,
            _ => {}
        }
        if self.until.is_some_and(|t| Instant::now() >= t) {
            self.plan = None;
            self.until = None;
        }
        let plan = self.plan.as_ref()?;
        if !plan.rules.iter().any(|r| r.scope.covers(kind)) {
            return None;
        }
        let u = unit(splitmix64(&mut self.rng));
        let mut low = 0.0;
        let mut picked = None;
        for rule in &plan.rules {
            let high = low + rule.rate;
            if u >= low && u < high {
                if rule.scope.covers(kind) {
                    picked = Some(rule.fault.clone());
                }
                break;
            }
            low = high;
        }
        let fault = picked?;
        *self.stats.faulted.entry(fault.name()).or_default() += 1;
        *self
            .stats
            .routes
            .entry(format!("{} {method} {}", fault.name(), route_of(path)))
            .or_default() += 1;
        Some(fault)
    }
}

/// A path with its numeric segments (ids) written `{id}`, and block paths folded to one.
fn route_of(path: &str) -> String {
    if path.starts_with("/blob/") {
        return "/blob/{user}/{hash}".into();
    }
    path.split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The splitmix64 step: a tiny, well-mixed generator, enough for picking requests.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A draw mapped onto [0, 1) (the top 53 bits, what an f64 holds exactly).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The proxy; see the module doc.
pub struct FaultProxy {
    /// Where clients connect: `http://127.0.0.1:<port>`.
    pub url: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    state: Arc<Mutex<State>>,
}

/// Why a connection is closed without an answer (hyper closes it when the service fails).
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}

impl std::error::Error for Dropped {}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (a server's base URL), with no faults yet.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("the fault proxy's runtime");
        let state = Arc::new(Mutex::new(State {
            plan: None,
            until: None,
            rng: 0,
            stats: Stats::default(),
        }));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(32)
                .tcp_nodelay(true)
                .build()
                .expect("the fault proxy's client"),
            state: state.clone(),
        });
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { handle(&shared, req).await }
                    });
                    // An error here is a dropped connection (ours or the client's).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            url,
            state,
            runtime: Some(runtime),
        }
    }

    /// Applies `plan` from now on (the draws start again from its seed).
    pub fn set(&self, plan: Plan) {
        let mut s = self.state.lock().unwrap();
        s.rng = plan.seed;
        s.plan = Some(plan);
        s.until = None;
    }

    /// Applies `plan` for `lasting`, then lets everything through again.
    pub fn set_for(&self, plan: Plan, lasting: Duration) {
        let mut s = self.state.lock().unwrap();
        s.rng = plan.seed;
        s.plan = Some(plan);
        s.until = Some(Instant::now() + lasting);
    }

    /// Lets everything through from now on.
    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.plan = None;
        s.until = None;
    }

    /// What the proxy saw so far.
    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap().stats.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

const THROTTLED: &str = r#"{"message":"Too Many Requests"}"#;
const GATEWAY_500: &str = r#"{"message":"Internal Server Error"}"#;
const HTML_503: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n";
const HTML_413: &str = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n</body>\r\n</html>\r\n";

fn answer(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response<Body> {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, content_type.parse().unwrap());
    resp
}

/// `resp` with `Retry-After: <secs>`, if given.
fn with_retry_after(mut resp: Response<Body>, secs: Option<u32>) -> Response<Body> {
    if let Some(secs) = secs {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            secs.to_string().parse().unwrap(),
        );
    }
    resp
}

/// Headers that belong to one hop and are not passed on.
fn hop_by_hop(name: &hyper::header::HeaderName) -> bool {
    use hyper::header::*;
    [
        CONNECTION,
        HOST,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        TE,
        TRAILER,
        UPGRADE,
        PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let path = req.uri().path().to_string();
    let kind = kind_of(req.method(), &path);
    let fault = shared
        .state
        .lock()
        .unwrap()
        .decide(kind, req.method(), &path);
    // The whole request is read first, as a server in front of the service would.
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(Body::new(body), usize::MAX)
        .await
        .map_err(|_| Dropped)?;
    match fault {
        Some(Fault::Throttle { retry_after }) => {
            let resp = answer(StatusCode::TOO_MANY_REQUESTS, "application/json", THROTTLED);
            return Ok(with_retry_after(resp, retry_after));
        }
        Some(Fault::Unavailable { retry_after }) => {
            let resp = answer(StatusCode::SERVICE_UNAVAILABLE, "text/html", HTML_503);
            return Ok(with_retry_after(resp, retry_after));
        }
        Some(Fault::TooLarge) => {
            return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, "text/html", HTML_413));
        }
        Some(Fault::GatewayError) => {
            return Ok(answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                GATEWAY_500,
            ));
        }
        Some(Fault::DropBefore) => return Err(Dropped),
        _ => {}
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut forward = shared
        .http
        .request(
            parts.method.clone(),
            format!("{}{}", shared.upstream, path_and_query),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            forward = forward.header(name, value);
        }
    }
    shared.state.lock().unwrap().stats.forwarded += 1;
    // The service unreachable: the client sees a dropped connection, as it would.
    let upstream = forward.send().await.map_err(|_| Dropped)?;
    let status = upstream.status();
    let mut headers = hyper::HeaderMap::new();
    for (name, value) in upstream.headers() {
        if !hop_by_hop(name) {
            headers.append(name, value.clone());
        }
    }
    let resp = match fault {
        Some(Fault::DropAfter) => {
            // Wait until the service has answered in full (it committed), then hang up.
            let _ = upstream.bytes().await;
            return Err(Dropped);
        }
        Some(Fault::AnswerOverflow) => {
            // The service answered in full (it committed); the client hears only the 500.
            let _ = upstream.bytes().await;
            return Ok(answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                GATEWAY_500,
            ));
        }
        Some(Fault::TornAnswer) => {
            let full = upstream.bytes().await.map_err(|_| Dropped)?;
            let mut resp = Response::new(Body::from(full.slice(..full.len() / 2)));
            *resp.status_mut() = StatusCode::OK;
            *resp.headers_mut() = headers;
            return Ok(resp);
        }
        Some(Fault::Slow(delay)) => {
            let full: Bytes = upstream.bytes().await.map_err(|_| Dropped)?;
            tokio::time::sleep(delay).await;
            Response::new(Body::from(full))
        }
        _ => Response::new(Body::from_stream(upstream.bytes_stream())),
    };
    let mut resp = resp;
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn requests_are_sorted_into_kinds() {
        assert_eq!(kind_of(&Method::POST, "/api/v1/nodes"), Kind::Change);
        assert_eq!(
            kind_of(&Method::PUT, "/api/v1/nodes/7/content"),
            Kind::Change
        );
        assert_eq!(kind_of(&Method::PATCH, "/api/v1/nodes/7"), Kind::Change);
        assert_eq!(kind_of(&Method::DELETE, "/api/v1/nodes/7"), Kind::Change);
        assert_eq!(kind_of(&Method::GET, "/api/v1/nodes/7"), Kind::Other);
        assert_eq!(kind_of(&Method::GET, "/api/v1/devices/3/poll"), Kind::Poll);
        assert_eq!(kind_of(&Method::PUT, "/blob/1/abc"), Kind::BlockPut);
        assert_eq!(kind_of(&Method::GET, "/blob/1/abc"), Kind::Other);
        assert_eq!(kind_of(&Method::POST, "/api/v10/nodes"), Kind::Other);
        assert_eq!(route_of("/api/v1/nodes/42/move"), "/api/v1/nodes/{id}/move");
        assert_eq!(route_of("/api/v1/nodes"), "/api/v1/nodes");
    }

    #[test]
    fn a_plan_hits_its_share_the_same_way_for_the_same_seed() {
        let run = |seed| {
            let mut s = State {
                plan: None,
                until: None,
                rng: 0,
                stats: Stats::default(),
            };
            let plan = Plan::new(seed)
                .with(
                    Fault::Unavailable { retry_after: None },
                    Scope::Changes,
                    0.2,
                )
                .with(Fault::TooLarge, Scope::Changes, 0.1);
            s.rng = plan.seed;
            s.plan = Some(plan);
            let picks: Vec<Option<Fault>> = (0..3000)
                .map(|_| s.decide(Kind::Change, &Method::POST, "/api/v1/nodes"))
                .collect();
            // Out of scope: never hit, and no draw taken.
            assert_eq!(s.decide(Kind::Poll, &Method::GET, "/p"), None);
            (picks, s.stats)
        };
        let (a, stats) = run(7);
        let (b, _) = run(7);
        let (c, _) = run(8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let share = |n: u64| n as f64 / 3000.0;
        assert!((share(stats.faulted("unavailable")) - 0.2).abs() < 0.03);
        assert!((share(stats.faulted("too_large")) - 0.1).abs() < 0.03);
        assert_eq!(stats.seen, 3001);
        assert_eq!(stats.changes, 3000);
    }
}
