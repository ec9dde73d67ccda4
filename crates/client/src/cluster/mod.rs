//! Redis Cluster: one multiplexed connection per primary, each pipeline split per node in
//! command order ([`route`]), replies put back in the pipeline's order.
//!
//! Why our own and not the redis crate's `ClusterConnection`: that one sends a pipeline
//! whole to the node of its first key (`CROSSSLOT` otherwise) and retries a redirected
//! pipeline whole, by itself. metacache's writer needs every command of a batch sent in
//! one round trip, and needs to decide itself what a redirection means: a `MOVED` or
//! `ASK` answer, like any transient error, makes the writer replay the batch and every
//! later one in order ("go back N"), which keeps per-key order through resharding and
//! failover; a retry inside the connection would not. Here a redirection or a node that
//! fails only marks the slot map stale; the next request reads `CLUSTER SLOTS` again.
//!
//! Order: requests of one task reach each node in the order they were made. A request is
//! put on its nodes' connections when its future is first polled (the writer polls each at
//! once, see `InFlight::push`), and while the map is being refreshed every later request
//! queues behind the refresh (a fair lock) instead of overtaking the ones waiting for it.

pub mod route;
pub mod slots;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use url::Url;

use crate::connect::{FixedConn, RedisConn};
use crate::settings::RedisSettings;
use route::{Answer, Split, Target};
use slots::SlotMap;

/// A connection to every primary of a Redis Cluster. Cheap to clone; clones share the
/// node connections and the slot map.
#[derive(Clone)]
pub struct ClusterConnection {
    inner: Arc<Inner>,
}

struct Inner {
    settings: RedisSettings,
    response_timeout: Duration,
    retries: usize,
    /// The writer's cluster connection: every node connection is a [`FixedConn`] with this
    /// name, opened when the connection is made and never again (see [`Self::opened`]).
    name: Option<String>,
    /// The first slot map was read and its primaries connected to.
    opened: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    /// Held while the map is refreshed and by every request made meanwhile, in order.
    gate: tokio::sync::Mutex<()>,
    /// Requests waiting at the gate: while there are any, new ones queue too.
    waiting: AtomicUsize,
    /// Bumped whenever a node connection is new or was replaced: the answer to `CLIENT
    /// ID`, so the writer sees a reconnect to any node as it sees one in standalone mode.
    generation: AtomicI64,
    /// Commands answered `ASK` are sent again, each after `ASKING`, to the node the answer
    /// names (see [`ClusterConnection::follow_ask`]).
    follow_ask: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    map: Option<SlotMap>,
    nodes: HashMap<String, Node>,
    stale: bool,
}

#[derive(Clone)]
struct Node {
    conn: NodeConn,
    /// The `CLIENT ID` the node gave last: another one means the connection was replaced.
    id: Arc<AtomicI64>,
}

/// A node's connection: one that reopens itself (readers, the janitor), or the writer's,
/// one socket named from its first command (see [`FixedConn`]).
#[derive(Clone)]
enum NodeConn {
    Managed(ConnectionManager),
    Fixed(FixedConn),
}

impl NodeConn {
    fn into_redis_conn(self) -> RedisConn {
        match self {
            NodeConn::Managed(c) => RedisConn::Single(c),
            NodeConn::Fixed(c) => RedisConn::Fixed(c),
        }
    }
}

impl ConnectionLike for NodeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            NodeConn::Managed(c) => c.req_packed_command(cmd),
            NodeConn::Fixed(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            NodeConn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            NodeConn::Fixed(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A request ready to go: the sub-pipelines, each with the connection it goes on.
struct Prepared {
    split: Split,
    subs: Vec<(String, Node, Pipeline)>,
}

/// What the error codes a cluster answers while it changes say about the slot map.
fn redirected(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => matches!(
            e.code(),
            "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY"
        ),
        _ => false,
    }
}

/// The node an `ASK` answer sends a command to (`ASK <slot> <host:port>`).
fn ask_target(v: &Value) -> Option<String> {
    match v {
        Value::ServerError(e) if e.code() == "ASK" => {
            e.details()?.split_whitespace().nth(1).map(str::to_owned)
        }
        _ => None,
    }
}

/// `e` with the node it came from: readiness and logs then say which node is down.
fn node_error(address: &str, e: &RedisError) -> RedisError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        // Kept an I/O error (the writer retries it, readiness calls it unreachable).
        let kind = if e.is_timeout() {
            std::io::ErrorKind::TimedOut
        } else if e.is_connection_refusal() {
            std::io::ErrorKind::ConnectionRefused
        } else {
            std::io::ErrorKind::BrokenPipe
        };
        return RedisError::from(std::io::Error::new(
            kind,
            format!("cluster node {address}: {e}"),
        ));
    }
    let kind = match e.kind() {
        ErrorKind::Server(_) | ErrorKind::Extension => ErrorKind::Io,
        other => other,
    };
    let text = match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => e.to_string(),
    };
    RedisError::from((kind, "cluster node", format!("{address}: {text}")))
}

impl ClusterConnection {
    /// Reads the slot map from the first seed (`redis.nodes`) that answers and connects
    /// to every primary.
    ///
    /// With a `name` (the writer's), every node connection is a [`FixedConn`] of that
    /// name, and only the primaries of this first map are ever connected to: a primary
    /// that appears later (a reshard to a new node) fails the request that needs it, as a
    /// broken connection does, and the writer opens a new cluster connection, whose nodes
    /// are all named before it proves its ownership and writes (a node connection opened
    /// later, in the middle of writing, would carry writes nobody proved).
    pub async fn connect(
        settings: &RedisSettings,
        response_timeout: Duration,
        retries: usize,
        name: Option<&str>,
    ) -> RedisResult<ClusterConnection> {
        let conn = ClusterConnection {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                response_timeout,
                retries,
                name: name.map(str::to_owned),
                opened: std::sync::atomic::AtomicBool::new(false),
                state: Mutex::new(State::default()),
                gate: tokio::sync::Mutex::new(()),
                waiting: AtomicUsize::new(0),
                generation: AtomicI64::new(0),
                // Readers and one-request-at-a-time callers follow `ASK`; the writer
                // turns it off while it pipelines.
                follow_ask: std::sync::atomic::AtomicBool::new(true),
            }),
        };
        {
            let _gate = conn.inner.gate.lock().await;
            conn.refresh().await?;
        }
        conn.inner.opened.store(true, Ordering::SeqCst);
        Ok(conn)
    }

    /// A connection to each primary as the map says now, without reading it again: for
    /// the writer's fence, which must not wait behind requests only the writer drives.
    pub fn current_connections(&self) -> Vec<(String, RedisConn)> {
        let state = self.state();
        let Some(map) = &state.map else {
            return Vec::new();
        };
        map.primaries()
            .iter()
            .filter_map(|a| {
                state
                    .nodes
                    .get(a)
                    .map(|n| (a.clone(), n.conn.clone().into_redis_conn()))
            })
            .collect()
    }

    /// Whether the node connections are the writer's [`FixedConn`]s.
    pub fn is_fixed(&self) -> bool {
        self.inner.name.is_some()
    }

    /// How to close each node's connection after a fence dropped this cluster connection:
    /// (node, `CLIENT KILL`), by both socket ends for the writer's node connections.
    pub fn kill_commands(&self) -> Vec<(String, Cmd)> {
        self.state()
            .nodes
            .iter()
            .map(|(a, n)| {
                let cmd = match &n.conn {
                    NodeConn::Fixed(c) => c.kill_command(),
                    NodeConn::Managed(_) => {
                        let mut cmd = redis::cmd("CLIENT");
                        cmd.arg("KILL").arg("ID").arg(n.id.load(Ordering::SeqCst));
                        cmd
                    }
                };
                (a.clone(), cmd)
            })
            .collect()
    }

    /// A connection to each primary (the map refreshed first when it is stale): for what
    /// must visit every node (`SCAN`, `INFO`).
    pub async fn primary_connections(&self) -> RedisResult<Vec<(String, RedisConn)>> {
        if self.state().stale {
            let _gate = self.inner.gate.lock().await;
            if self.state().stale {
                self.refresh().await?;
            }
        }
        Ok(self.current_connections())
    }

    /// The answer to `CLIENT ID` (see [`Inner::generation`]).
    pub fn generation(&self) -> i64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// Whether to follow `ASK` answers. A slot being migrated stays with its source node in
    /// `CLUSTER SLOTS` until the migration is finished, so reading the map again never
    /// helps; a migration left half done (an interrupted reshard) would answer `ASK` to
    /// every retry for as long as it lasts. Following it is safe for per-key order only
    /// while one request is in flight (the writer's in-order replay): each command
    /// answered `ASK` is sent again, in the request's order, after the source answered.
    /// With several requests in flight, a later one's follow-up could reach the importing
    /// node first, so the writer turns this off while it pipelines and on while it replays
    /// one batch at a time. On by default (readers, the layout claim, the janitor).
    pub fn follow_ask(&self, on: bool) {
        self.inner.follow_ask.store(on, Ordering::SeqCst);
    }

    /// The slot map is read again before the next request.
    pub fn mark_stale(&self) {
        self.state().stale = true;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it leaves plain data: use it as it is.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `CLUSTER SLOTS` from a node that answers (a known primary, else a seed),
    /// connects to primaries not connected yet and drops the others. Called with the gate.
    async fn refresh(&self) -> RedisResult<()> {
        let known: Vec<(String, NodeConn)> = {
            let state = self.state();
            state
                .nodes
                .iter()
                .map(|(a, n)| (a.clone(), n.conn.clone()))
                .collect()
        };
        let mut last_error = None;
        let mut found = None;
        for (address, mut conn) in known {
            match self.slots_from(&address, &mut conn).await {
                Ok(map) => {
                    found = Some(map);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if found.is_none() {
            for seed in self.seeds() {
                let opened = self.open_node(&seed).await;
                let result = match opened {
                    Ok(mut conn) => self.slots_from(&seed, &mut conn).await,
                    Err(e) => Err(node_error(&seed, &e)),
                };
                match result {
                    Ok(map) => {
                        found = Some(map);
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
        }
        let Some(map) = found else {
            return Err(last_error.unwrap_or_else(unmapped));
        };
        if map.unserved() > 0 {
            self.state().stale = true;
            return Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "CLUSTERDOWN",
                format!("{} hash slots are served by no primary", map.unserved()),
            )));
        }
        let mut opened = Vec::new();
        for address in map.primaries() {
            if self.state().nodes.contains_key(address) {
                continue;
            }
            if self.is_fixed() && self.inner.opened.load(Ordering::SeqCst) {
                // See `connect`: the writer reconnects, so that this node's connection is
                // named and proven before anything is written there.
                self.state().stale = true;
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    format!("cluster node {address} is new to this writer's connection: reconnecting to name it and prove ownership before writing there"),
                )));
            }
            let mut conn = self
                .open_node(address)
                .await
                .map_err(|e| node_error(address, &e))?;
            // Known from the start, so a reconnect before the first pipeline's answer
            // still shows as another id (and the connection can be killed after a fence).
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut conn)
                .await
                .map_err(|e| node_error(address, &e))?;
            opened.push((address.clone(), conn, id));
        }
        let mut state = self.state();
        for (address, conn, id) in opened {
            state.nodes.insert(
                address,
                Node {
                    conn,
                    id: Arc::new(AtomicI64::new(id)),
                },
            );
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        state.nodes.retain(|a, _| map.primaries().contains(a));
        state.map = Some(map);
        state.stale = false;
        Ok(())
    }

    async fn slots_from(&self, address: &str, conn: &mut NodeConn) -> RedisResult<SlotMap> {
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(conn)
            .await
            .map_err(|e| node_error(address, &e))?;
        SlotMap::from_cluster_slots(&reply, address).map_err(|e| {
            RedisError::from((ErrorKind::Parse, "CLUSTER SLOTS", format!("{address}: {e}")))
        })
    }

    /// `host:port` of each seed in `redis.nodes`.
    fn seeds(&self) -> Vec<String> {
        self.inner
            .settings
            .nodes
            .iter()
            .filter_map(|n| Url::parse(n).ok())
            .filter_map(|u| Some(format!("{}:{}", u.host_str()?, u.port().unwrap_or(6379))))
            .collect()
    }

    /// A connection to `address` with the settings' credentials and TLS (the first seed's
    /// URL with its host and port replaced).
    async fn open_node(&self, address: &str) -> RedisResult<NodeConn> {
        let settings = node_settings(&self.inner.settings, address)?;
        Ok(match &self.inner.name {
            Some(name) => NodeConn::Fixed(
                FixedConn::open(&settings, self.inner.response_timeout, name).await?,
            ),
            None => NodeConn::Managed(
                crate::connect::open_single(
                    &settings,
                    self.inner.response_timeout,
                    self.inner.retries,
                )
                .await?,
            ),
        })
    }

    /// Splits `commands` over the nodes now, or `None` when the map must be read first.
    fn prepare(&self, commands: &[&Cmd], slow: bool) -> Option<RedisResult<Prepared>> {
        let state = self.state();
        if state.stale || (!slow && self.inner.waiting.load(Ordering::SeqCst) > 0) {
            return None;
        }
        let map = state.map.as_ref()?;
        let targets: Vec<Target> = commands.iter().map(|c| route::target(c)).collect();
        let split = match route::split(&targets, |slot| map.owner_index(slot), 0) {
            Ok(split) => split,
            Err(slot) => {
                return Some(Err(RedisError::from((
                    ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                    "CLUSTERDOWN",
                    format!("hash slot {slot} is served by no primary"),
                ))))
            }
        };
        let mut subs = Vec::with_capacity(split.per_node.len());
        for (node, indices) in &split.per_node {
            let address = &map.primaries()[*node];
            let conn = state.nodes.get(address)?.clone();
            let mut pipe = redis::pipe();
            for i in indices {
                pipe.add_command(commands[*i].clone());
            }
            // Tells whether this node's connection is still the one it was.
            pipe.cmd("CLIENT").arg("ID");
            subs.push((address.clone(), conn, pipe));
        }
        Some(Ok(Prepared { split, subs }))
    }

    /// Sends `commands` as one request per node; the replies in the commands' order.
    fn request(&self, commands: Vec<Cmd>) -> BoxFuture<'static, RedisResult<Vec<Value>>> {
        let this = self.clone();
        async move {
            let refs: Vec<&Cmd> = commands.iter().collect();
            let sent = match this.prepare(&refs, false) {
                Some(Ok(prepared)) => this.send(prepared),
                Some(Err(e)) => return Err(e),
                None => {
                    // Queue behind the requests already waiting, refresh if still needed,
                    // and put this one on the wire before letting the next one go.
                    let _waiting = Waiting::new(&this.inner.waiting);
                    let _gate = this.inner.gate.lock().await;
                    let prepared = match this.prepare(&refs, true) {
                        Some(prepared) => prepared?,
                        None => {
                            this.refresh().await?;
                            this.prepare(&refs, true).ok_or_else(unmapped)??
                        }
                    };
                    let mut sent = Box::pin(this.send(prepared));
                    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                    if let Poll::Ready(answer) = sent.as_mut().poll(&mut cx) {
                        return answer;
                    }
                    sent
                }
            };
            sent.await
        }
        .boxed()
    }

    /// Hands each sub-pipeline to its node (on the first poll) and assembles the answer.
    fn send(
        &self,
        prepared: Prepared,
    ) -> std::pin::Pin<Box<dyn Future<Output = RedisResult<Vec<Value>>> + Send>> {
        let this = self.clone();
        let Prepared { split, subs } = prepared;
        let follow_ask = self.inner.follow_ask.load(Ordering::SeqCst);
        let flights = join_all(subs.into_iter().map(|(address, node, pipe)| {
            let mut conn = node.conn.clone();
            let this = this.clone();
            async move {
                let count = pipe.len();
                let mut replies = conn.req_packed_commands(&pipe, 0, count).await;
                if let (true, Ok(values)) = (follow_ask, replies.as_mut()) {
                    this.follow_asks(&pipe, values).await;
                }
                (address, node, replies)
            }
        }));
        Box::pin(async move {
            let answered = flights.await;
            let mut per_node: HashMap<usize, Vec<Value>> = HashMap::new();
            let mut failure = None;
            for ((address, node, replies), (index, _)) in answered.into_iter().zip(&split.per_node)
            {
                match replies {
                    Err(e) => {
                        this.mark_stale();
                        failure.get_or_insert_with(|| node_error(&address, &e));
                    }
                    Ok(mut values) => {
                        if let Some(Value::Int(id)) = values.pop() {
                            let before = node.id.swap(id, Ordering::SeqCst);
                            if before != id {
                                this.inner.generation.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        if values.iter().any(redirected) {
                            this.mark_stale();
                        }
                        per_node.insert(*index, values);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            let generation = this.generation();
            let take = |node: usize, pos: usize| -> Value {
                per_node
                    .get(&node)
                    .and_then(|v| v.get(pos))
                    .cloned()
                    .unwrap_or(Value::Nil)
            };
            Ok(split
                .answers
                .iter()
                .map(|a| match a {
                    Answer::At { node, pos } => take(*node, *pos),
                    Answer::ClientId => Value::Int(generation),
                    Answer::Fewest(at) => at
                        .iter()
                        .map(|(n, p)| take(*n, *p))
                        .min_by_key(|v| match v {
                            Value::Int(i) => *i,
                            _ => i64::MIN,
                        })
                        .unwrap_or(Value::Nil),
                })
                .collect())
        })
    }

    /// Sends each command of `pipe` answered `ASK` again, in order, to the node the
    /// answer names, after `ASKING`, and puts that node's answer in its place. A node not
    /// connected to (not a primary in the map) leaves the `ASK` in place: a retry.
    async fn follow_asks(&self, pipe: &Pipeline, values: &mut [Value]) {
        let commands: Vec<&Cmd> = pipe.cmd_iter().collect();
        for (i, value) in values.iter_mut().enumerate() {
            let Some(to) = ask_target(value) else {
                continue;
            };
            let (Some(cmd), Some(node)) = (commands.get(i), self.state().nodes.get(&to).cloned())
            else {
                continue;
            };
            let mut asking = redis::pipe();
            asking.cmd("ASKING");
            asking.add_command((*cmd).clone());
            let mut conn = node.conn.clone();
            if let Ok(mut answer) = conn.req_packed_commands(&asking, 0, 2).await {
                if let Some(v) = answer.pop() {
                    *value = v;
                }
            }
        }
    }

    /// A keyless command sent alone: to every primary; the first answer, or the first
    /// node's error naming it (a health check then says which node is down).
    async fn everywhere(&self, cmd: Cmd) -> RedisResult<Value> {
        let nodes = self.primary_connections().await?;
        let answers = join_all(nodes.into_iter().map(|(address, mut conn)| {
            let cmd = cmd.clone();
            async move { (address.clone(), cmd.query_async::<Value>(&mut conn).await) }
        }))
        .await;
        let mut first = None;
        for (address, answer) in answers {
            match answer {
                Ok(v) => {
                    first.get_or_insert(v);
                }
                Err(e) => {
                    self.mark_stale();
                    return Err(node_error(&address, &e));
                }
            }
        }
        first.ok_or_else(unmapped)
    }
}

/// Counts a request waiting at the gate for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn unmapped() -> RedisError {
    RedisError::from((
        ErrorKind::ClusterConnectionNotFound,
        "no slot map",
        "no node of the cluster answered CLUSTER SLOTS".to_owned(),
    ))
}

/// The settings for one node: the first seed's URL (scheme, user, password) at `address`.
fn node_settings(settings: &RedisSettings, address: &str) -> RedisResult<RedisSettings> {
    let bad = |e: String| RedisError::from((ErrorKind::InvalidClientConfig, "redis.nodes", e));
    let seed = settings
        .nodes
        .first()
        .ok_or_else(|| bad("cluster mode needs redis.nodes".into()))?;
    let mut url = Url::parse(seed).map_err(|e| bad(format!("a seed is not a URL: {e}")))?;
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("{address}: not host:port")))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{address}: not host:port")))?;
    url.set_host(Some(host))
        .map_err(|e| bad(format!("{address}: {e}")))?;
    let _ = url.set_port(Some(port));
    url.set_path("");
    Ok(RedisSettings {
        mode: "standalone".into(),
        url: url.into(),
        ..settings.clone()
    })
}

impl ConnectionLike for ClusterConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match route::target(cmd) {
            Target::ClientId => {
                let id = self.generation();
                async move { Ok(Value::Int(id)) }.boxed()
            }
            Target::Any => {
                let cmd = cmd.clone();
                let this = self.clone();
                async move { this.everywhere(cmd).await }.boxed()
            }
            Target::Slot(_) | Target::Wait => {
                let request = self.request(vec![cmd.clone()]);
                async move {
                    let mut replies = request.await?;
                    match replies.pop() {
                        Some(Value::ServerError(e)) => Err(e.into()),
                        Some(v) => Ok(v),
                        None => Err(unmapped()),
                    }
                }
                .boxed()
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if pipeline.is_transaction() {
            return self.transaction(pipeline, offset, count);
        }
        let request = self.request(pipeline.cmd_iter().cloned().collect());
        async move {
            let replies = request.await?;
            Ok(replies.into_iter().skip(offset).take(count).collect())
        }
        .boxed()
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl ClusterConnection {
    /// `MULTI`/`EXEC`: only when every key is on one node, which Redis Cluster requires
    /// anyway (one slot); sent there as it is.
    fn transaction<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let node = {
            let state = self.state();
            let owners: Vec<Option<String>> = pipeline
                .cmd_iter()
                .filter_map(|c| match route::target(c) {
                    Target::Slot(s) => Some(
                        state
                            .map
                            .as_ref()
                            .and_then(|m| m.owner(s).map(str::to_owned)),
                    ),
                    _ => None,
                })
                .collect();
            match owners.first() {
                Some(Some(first)) if owners.iter().all(|o| o.as_deref() == Some(first)) => {
                    state.nodes.get(first).map(|n| n.conn.clone())
                }
                _ => None,
            }
        };
        async move {
            let Some(mut conn) = node else {
                return Err(RedisError::from((
                    ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
                    "CROSSSLOT",
                    "a transaction's keys are not all on one cluster node".to_owned(),
                )));
            };
            conn.req_packed_commands(pipeline, offset, count).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_settings_keep_the_seeds_credentials_and_scheme() {
        let settings = RedisSettings {
            mode: "cluster".into(),
            nodes: vec![
                "rediss://app:pw@seed:7000".into(),
                "rediss://other:7001".into(),
            ],
            ..RedisSettings::default()
        };
        let node = node_settings(&settings, "10.0.0.5:7005").unwrap();
        assert_eq!(node.url, "rediss://app:pw@10.0.0.5:7005");
        assert_eq!(node.mode, "standalone");
        let v6 = node_settings(&settings, "[::1]:7002").unwrap();
        assert_eq!(v6.url, "rediss://app:pw@[::1]:7002");
    }
}
