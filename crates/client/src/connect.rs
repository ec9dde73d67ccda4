//! Opening a Redis connection from settings. Readers' connections repair themselves
//! (reconnecting after a drop is the `redis` crate's `ConnectionManager`'s job); the
//! writer's are [`FixedConn`]s, one socket each for its whole life (see there why).

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::auth::{BasicAuth, StreamingCredentialsProvider};
use redis::io::tcp::TcpSettings;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, IntoConnectionInfo, RedisResult,
    TlsCertificates,
};
use url::Url;

use crate::cluster::ClusterConnection;
use crate::settings::{RedisMode, RedisSettings};

/// A connection to wherever `[redis]` points: one server (standalone, or the primary the
/// sentinels name) or every primary of a cluster. The read side and the writer use it
/// alike; what must visit each node (`SCAN`, `INFO`, `CLIENT LIST`) asks [`nodes`].
///
/// [`nodes`]: RedisConn::nodes
#[derive(Clone)]
pub enum RedisConn {
    /// One server: standalone, or the primary the sentinels named.
    Single(ConnectionManager),
    /// One server, on one socket that is never reopened: the writer's (see [`FixedConn`]).
    Fixed(FixedConn),
    /// Every primary of a Redis Cluster.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// [`nodes`](Self::nodes) as the cluster's slot map says now, never waiting for it to
    /// be read again (the writer's fence: requests only the writer drives may hold it).
    pub fn nodes_now(&self) -> Vec<(String, RedisConn)> {
        match self {
            RedisConn::Single(_) | RedisConn::Fixed(_) => vec![(String::new(), self.clone())],
            RedisConn::Cluster(c) => c.current_connections(),
        }
    }

    /// The values of `keys`, in order (errors as `Value::ServerError`): one `MGET`, or on a
    /// cluster, where `MGET` needs every key in one slot, one `GET` each in a pipeline the
    /// connection splits per node (a round trip per node).
    pub async fn values<K: redis::ToRedisArgs + Sync>(
        &mut self,
        keys: &[K],
    ) -> RedisResult<Vec<redis::Value>> {
        if self.is_cluster() {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("GET").arg(key);
            }
            return pipe.query_async(self).await;
        }
        match redis::cmd("MGET").arg(keys).query_async(self).await? {
            redis::Value::Array(items) => Ok(items),
            redis::Value::Nil => Ok(Vec::new()),
            other => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "MGET",
                format!("expected an array, got {other:?}"),
            ))),
        }
    }

    /// `INFO <section>` of every node that holds part of the data (one in standalone and
    /// sentinel modes): figures such as memory are per node, and a cluster's are the sum.
    pub async fn info_each(&self, section: &str) -> RedisResult<Vec<String>> {
        let mut texts = Vec::new();
        for (_, mut node) in self.nodes().await? {
            texts.push(
                redis::cmd("INFO")
                    .arg(section)
                    .query_async(&mut node)
                    .await?,
            );
        }
        Ok(texts)
    }

    /// A connection to each node that holds part of the data, with its address (empty
    /// for the one server of standalone and sentinel modes).
    pub async fn nodes(&self) -> RedisResult<Vec<(String, RedisConn)>> {
        match self {
            RedisConn::Single(_) | RedisConn::Fixed(_) => Ok(vec![(String::new(), self.clone())]),
            RedisConn::Cluster(c) => c.primary_connections().await,
        }
    }
}

impl redis::aio::ConnectionLike for RedisConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Fixed(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Fixed(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Fixed(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// The URL with `username`, `password` and `db` overrides applied. It carries the
/// password: never log it (log [`RedisSettings::redacted_url`] instead).
pub fn effective_url(settings: &RedisSettings) -> Result<String, String> {
    let mut url = Url::parse(&settings.url).map_err(|e| format!("redis.url: {e}"))?;
    if let Some(user) = &settings.username {
        url.set_username(user)
            .map_err(|_| "redis.username: cannot be set on this URL".to_owned())?;
    }
    if let Some(password) = &settings.password {
        url.set_password(Some(password))
            .map_err(|_| "redis.password: cannot be set on this URL".to_owned())?;
    }
    if let Some(db) = settings.db {
        if url.scheme() == "redis" || url.scheme() == "rediss" {
            url.set_path(&format!("/{db}"));
        } else {
            url.query_pairs_mut().append_pair("db", &db.to_string());
        }
    }
    Ok(url.into())
}

/// Opens a multiplexed, self-repairing connection with the settings' URL, overrides and
/// timeouts, without loading the scripts (the read side needs none, and a read-only user
/// may not be allowed `SCRIPT LOAD`).
pub async fn open(settings: &RedisSettings) -> RedisResult<RedisConn> {
    let response_timeout = Duration::from_millis(settings.response_timeout_ms);
    open_with(settings, response_timeout, 1).await
}

/// [`open`] with another response timeout and number of connection retries: the
/// daemon's monitor wants a short timeout and no retry, so that a slow or absent Redis
/// shows in `/readyz` at once. Every other setting (credentials, password file, TLS) is
/// the same for every connection metacache opens.
pub async fn open_with(
    settings: &RedisSettings,
    response_timeout: Duration,
    retries: usize,
) -> RedisResult<RedisConn> {
    Ok(open_located(settings, response_timeout, retries, None)
        .await?
        .0)
}

/// [`open_with`], and where the connection went: `None` for the configured URL, the
/// primary the sentinels named in sentinel mode. A sentinel-named primary is checked with
/// `ROLE` before it is returned, so a node demoted a moment ago is never written to.
///
/// With a `name` (the writer's), a standalone or sentinel-located server gets a
/// [`FixedConn`] carrying that name from its first command, instead of a connection that
/// reopens itself.
pub async fn open_located(
    settings: &RedisSettings,
    response_timeout: Duration,
    retries: usize,
    name: Option<&str>,
) -> RedisResult<(RedisConn, Option<crate::sentinel::Primary>)> {
    let one = |at: RedisSettings| async move {
        match name {
            Some(name) => Ok::<_, redis::RedisError>(RedisConn::Fixed(
                FixedConn::open(&at, response_timeout, name).await?,
            )),
            None => Ok(RedisConn::Single(
                open_single(&at, response_timeout, retries).await?,
            )),
        }
    };
    match settings.mode() {
        RedisMode::Standalone => return Ok((one(settings.clone()).await?, None)),
        RedisMode::Cluster => {
            let conn =
                ClusterConnection::connect(settings, response_timeout, retries, name).await?;
            return Ok((RedisConn::Cluster(conn), None));
        }
        RedisMode::Sentinel => {}
    }
    let primary = crate::sentinel::locate_primary(settings).await?;
    let address = primary.address.clone();
    let at = crate::sentinel::at_primary(settings, &address);
    let mut conn = one(at).await?;
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut conn).await?;
    match crate::sentinel::role_name(&role).as_deref() {
        Some("master") => Ok((conn, Some(primary))),
        other => Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "not a primary",
            format!(
                "the sentinels name {address} as primary of {:?} but it answers ROLE {}",
                settings.sentinel_master,
                other.unwrap_or("?")
            ),
        ))),
    }
}

/// A connection to the settings' own URL.
pub(crate) async fn open_single(
    settings: &RedisSettings,
    response_timeout: Duration,
    retries: usize,
) -> RedisResult<ConnectionManager> {
    let (client, user) = client(settings)?;
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(retries)
        .set_max_delay(Duration::from_secs(2))
        // Requests waiting for room in the connection's queue (50 by default) are let in
        // by a semaphore but join the queue when next polled, so a full queue could let a
        // later pipeline of the writer ahead of an earlier one. The writer keeps at most
        // `writer.max_in_flight` (<= 64) pipelines and a few side requests in flight:
        // with room for all of them the queue is never full.
        .set_pipeline_buffer_size(PIPELINE_BUFFER);
    if let Some(provider) = PasswordFile::of(settings, user) {
        config = config.set_credentials_provider(provider);
    }
    ConnectionManager::new_with_config(client, config).await
}

/// One connection to one server for its whole life, named from its first command and
/// with its `CLIENT ID` known before anything else is sent on it: the writer's.
///
/// Why not a connection that reopens itself: a socket reopened behind the writer's back
/// carries writes before anyone has named it or asked whether this process still owns
/// what it writes, so a new owner's fence (`CLIENT KILL` of every connection named
/// `metacache-writer`) cannot see it, and a member evicted meanwhile writes after the new
/// owner. When this socket breaks, every request on it fails; the writer opens the next
/// one itself, and proves its ownership again before it writes there.
#[derive(Clone)]
pub struct FixedConn {
    conn: MultiplexedConnection,
    me: ClientInfo,
}

/// Who a connection is on its server: `CLIENT INFO`'s `id`, `addr` (the peer as the
/// server sees it) and `laddr` (the server's own address for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// `CLIENT ID`: unique on its server, and only there.
    pub id: i64,
    /// The client's end as the server sees it (`ip:port`).
    pub addr: String,
    /// The server's end (`ip:port`).
    pub laddr: String,
}

impl ClientInfo {
    /// Reads a `CLIENT INFO` (or one `CLIENT LIST` line) reply.
    pub fn parse(text: &str) -> Option<ClientInfo> {
        let field = |name: &str| {
            text.split_ascii_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        };
        Some(ClientInfo {
            id: field("id")?.parse().ok()?,
            addr: field("addr")?.to_owned(),
            laddr: field("laddr")?.to_owned(),
        })
    }
}

impl FixedConn {
    /// Connects, then `CLIENT SETNAME name` and `CLIENT ID` before the connection is
    /// handed out. A refused name (an ACL without `client|setname`) is an
    /// error: a connection the fence cannot find must not carry writes.
    pub async fn open(
        settings: &RedisSettings,
        response_timeout: Duration,
        name: &str,
    ) -> RedisResult<FixedConn> {
        let (client, user) = client(settings)?;
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(response_timeout))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        if let Some(provider) = PasswordFile::of(settings, user) {
            config = config.set_credentials_provider(provider);
        }
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Two round trips, once per connection: a refusal then reads as Redis's own
        // error (`NOPERM … 'client|setname'`), not as a pipeline's.
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async::<()>(&mut conn)
            .await?;
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut conn)
            .await?;
        let me = ClientInfo::parse(&info).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "CLIENT INFO",
                format!("no id, addr and laddr in {info:?}"),
            ))
        })?;
        Ok(FixedConn { conn, me })
    }

    /// The server's `CLIENT ID` for this connection.
    pub fn id(&self) -> i64 {
        self.me.id
    }

    /// `CLIENT KILL` of this connection and no other, to send on another connection
    /// after this one was given up. Ids are counted per server, so the id alone could
    /// name someone else's connection on a server the address now leads to (a failover
    /// behind a fixed address); with both ends of the socket it cannot.
    pub fn kill_command(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("KILL")
            .arg("ID")
            .arg(self.me.id)
            .arg("ADDR")
            .arg(&self.me.addr)
            .arg("LADDR")
            .arg(&self.me.laddr);
        cmd
    }
}

impl redis::aio::ConnectionLike for FixedConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// A client for the settings' URL with its overrides and TLS files, and the user name.
fn client(settings: &RedisSettings) -> RedisResult<(Client, Option<String>)> {
    install_crypto_provider();
    let url = effective_url(settings).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad URL", e))
    })?;
    // A pipelining client wants every write on the wire at once; Nagle's algorithm could
    // hold back a pipeline's tail (no change was measured on loopback, but it costs nothing).
    let info = url
        .as_str()
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    // No `CLIENT SETINFO` at connect: before Redis 7.2 it is no command, and a
    // least-privilege user on 6.2 is refused it (an `ACL LOG` entry for every connection,
    // which would hide a real refusal); the printed ACL line cannot grant it on 7.0, which
    // rejects unknown subcommands.
    let redis_settings = info.redis_settings().clone().set_skip_set_lib_name();
    let info = info.set_redis_settings(redis_settings);
    let user = info.redis_settings().username().map(str::to_owned);
    let client = if settings.tls.is_set() {
        Client::build_with_tls(info, certificates(&settings.tls)?)?
    } else {
        Client::open(info)?
    };
    Ok((client, user))
}

/// Requests a connection queues before senders wait: above the writer's largest
/// `writer.max_in_flight` (64) plus its side requests.
const PIPELINE_BUFFER: usize = 128;

/// The `[redis.tls]` files, read now (each connection of this client uses them).
pub(crate) fn certificates(tls: &crate::settings::TlsSettings) -> RedisResult<TlsCertificates> {
    let read = |field: &str, path: &str| -> RedisResult<Vec<u8>> {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS file",
                format!("redis.tls.{field}: cannot read {path:?}: {e}"),
            ))
        })
    };
    let root_cert = match tls.ca_file.as_str() {
        "" => None,
        path => Some(read("ca_file", path)?),
    };
    let client_tls = match (tls.client_cert_file.as_str(), tls.client_key_file.as_str()) {
        ("", "") => None,
        (cert, key) if !cert.is_empty() && !key.is_empty() => Some(ClientTlsConfig {
            client_cert: read("client_cert_file", cert)?,
            client_key: read("client_key_file", key)?,
        }),
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "TLS files",
                "redis.tls.client_cert_file and redis.tls.client_key_file go together".to_owned(),
            )))
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// How often an open connection looks at `redis.password_file` for a rotated password.
pub const PASSWORD_FILE_POLL: Duration = Duration::from_secs(10);

/// `redis.password_file` as the `redis` crate's credentials provider: every connection
/// (the first and each reconnect) authenticates with what the file holds at that moment,
/// and an open connection re-authenticates (`AUTH`) when the file changes, so a rotated
/// Kubernetes Secret needs no restart.
struct PasswordFile {
    path: String,
    username: String,
    every: Duration,
}

impl PasswordFile {
    /// The provider for `redis.password_file`, if it is set; `user` from the URL or
    /// `redis.username`, else `default`.
    fn of(settings: &RedisSettings, user: Option<String>) -> Option<PasswordFile> {
        settings.password_file.as_ref().map(|path| PasswordFile {
            path: path.clone(),
            username: user.unwrap_or_else(|| "default".to_owned()),
            every: PASSWORD_FILE_POLL,
        })
    }

    fn read(path: &str, username: &str) -> redis::RedisResult<BasicAuth> {
        match crate::settings::read_secret_file(path) {
            Ok(password) => Ok(BasicAuth::new(username.to_owned(), password)),
            Err(reason) => Err(redis::RedisError::from((
                redis::ErrorKind::AuthenticationFailed,
                "redis.password_file",
                reason,
            ))),
        }
    }
}

impl StreamingCredentialsProvider for PasswordFile {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = redis::RedisResult<BasicAuth>> + Send>> {
        let (path, username, every) = (self.path.clone(), self.username.clone(), self.every);
        // The current password at once, then each change.
        Box::pin(futures_util::stream::unfold(None::<String>, move |last| {
            let (path, username) = (path.clone(), username.clone());
            async move {
                loop {
                    if last.is_some() {
                        tokio::time::sleep(every).await;
                    }
                    let read = PasswordFile::read(&path, &username);
                    let seen = read.as_ref().ok().map(|a| a.password().to_owned());
                    match (&read, &last) {
                        (Ok(_), Some(before)) if seen.as_ref() == Some(before) => continue,
                        // An unreadable file after a good read keeps the connection as it is.
                        (Err(_), Some(_)) => continue,
                        _ => return Some((read, seen.or(last))),
                    }
                }
            }
        }))
    }
}

/// `rediss://` needs a process-wide rustls crypto provider; installing one twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_applied_to_the_url() {
        let settings = RedisSettings {
            url: "redis://cache:6380/0".into(),
            username: Some("app".into()),
            password: Some("s3cr:t".into()),
            db: Some(3),
            ..RedisSettings::default()
        };
        assert_eq!(
            effective_url(&settings).unwrap(),
            "redis://app:s3cr%3At@cache:6380/3"
        );
    }

    #[test]
    fn client_info_names_both_ends_of_the_socket() {
        let info = "id=7 addr=127.0.0.1:50616 laddr=127.0.0.1:6379 fd=8 name=metacache-writer age=0 idle=0 flags=N db=0\n";
        assert_eq!(
            ClientInfo::parse(info),
            Some(ClientInfo {
                id: 7,
                addr: "127.0.0.1:50616".into(),
                laddr: "127.0.0.1:6379".into(),
            })
        );
        assert_eq!(ClientInfo::parse("id=7 addr=x"), None);
        assert_eq!(ClientInfo::parse("id=x addr=a laddr=b"), None);
    }

    #[test]
    fn url_is_kept_when_nothing_overrides_it() {
        let settings = RedisSettings {
            url: "rediss://u:p@h:6379/2".into(),
            ..RedisSettings::default()
        };
        assert_eq!(effective_url(&settings).unwrap(), "rediss://u:p@h:6379/2");
    }
}
