//! The one place the Rust core talks to Postgres itself: the initial sync's table copies.
//!
//! Each copy runs on its own connection in a REPEATABLE READ transaction on the snapshot the
//! replication slot exported, so every table is read exactly as of the slot's consistent point.
//! What the COPY output means is the business of [`crate::pg::copy`].
//!
//! A small blocking client of the frontend/backend protocol (v3) of our own, over a TCP or Unix
//! socket: Postgres sends one CopyData message per row, and a general client's per-message
//! handling (the `postgres` crate: a channel hop and an allocation per message) was about a third
//! of the readers' CPU (bench/README.md, Replication). Here the socket is read into one large
//! buffer and every CopyData payload is handed on as a slice of it. Message encoding and the
//! password hashing (md5, SCRAM-SHA-256) come from `postgres-protocol`. No TLS: Python uses this
//! path only when its own connection does not use TLS.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;

use crate::error::{Error, Result};

/// Covers connecting and authenticating (as libpq's `connect_timeout`), not the copy.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket reads go into a buffer this large: one read brings thousands of rows.
const READ_BUFFER_BYTES: usize = 1 << 20;
/// Postgres never sends a message larger than this (its `PQ_LARGE_MESSAGE_LIMIT` is 1 GiB).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

const SQLSTATE_INVALID_PASSWORD: &str = "28P01";
const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";

/// Where and as whom to connect: the parameters psycopg resolved (DSN, environment, passfile) for
/// the connection it already has.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// A host name, an address, or a Unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl ConnectParams {
    fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// An ErrorResponse's fields that the messages use.
#[derive(Debug, Default)]
struct ServerError {
    code: String,
    message: String,
    detail: Option<String>,
}

impl ServerError {
    /// Parses an ErrorResponse body: (field type, NUL-terminated text) pairs, then a NUL.
    fn parse(body: &[u8]) -> ServerError {
        let mut error = ServerError::default();
        let mut rest = body;
        while let Some((&kind, after)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
            let value = String::from_utf8_lossy(&after[..end]).into_owned();
            match kind {
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                _ => {}
            }
            rest = after.get(end + 1..).unwrap_or_default();
        }
        error
    }

    fn text(&self) -> String {
        match &self.detail {
            Some(detail) => format!("{} ({detail})", self.message),
            None => self.message.clone(),
        }
    }
}

/// What can go wrong on a connection: the server said no, or the connection itself failed.
enum Failure {
    Server(ServerError),
    Client(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// One protocol connection: the socket, and what has been read from it but not yet consumed
/// (`buf[start..end]`).
struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: BytesMut,
}

impl Connection {
    fn open(params: &ConnectParams) -> io::Result<Stream> {
        if params.host.starts_with('/') {
            return Ok(Stream::Unix(UnixStream::connect(format!("{}/.s.PGSQL.{}", params.host, params.port))?));
        }
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address");
        for address in (params.host.as_str(), params.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(Stream::Tcp(stream));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends what `encode` writes into the output buffer.
    fn send(&mut self, encode: impl FnOnce(&mut BytesMut) -> io::Result<()>) -> Result<()> {
        self.out.clear();
        encode(&mut self.out)?;
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// The next message: its tag and the range of its body in `buf`, valid until the next call.
    fn next_message(&mut self) -> Result<(u8, usize, usize)> {
        loop {
            let available = &self.buf[self.start..self.end];
            if let Some(header) = available.get(..5) {
                let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                if !(4..=MAX_MESSAGE_BYTES).contains(&length) {
                    return Err(Error::Malformed {
                        what: "Postgres protocol message",
                        detail: format!("message {:?} claims a length of {length} bytes", char::from(header[0])),
                    });
                }
                if available.len() > length {
                    let tag = header[0];
                    let body = self.start + 5;
                    self.start += 1 + length;
                    return Ok((tag, body, self.start));
                }
                if 1 + length > self.buf.len() {
                    self.buf.resize(1 + length, 0);
                }
            }
            self.fill()?;
        }
    }

    /// Reads more bytes, after moving the unconsumed tail (less than one message) to the front.
    fn fill(&mut self) -> Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")));
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Startup and authentication, up to the first ReadyForQuery.
    fn start(&mut self, params: &ConnectParams) -> std::result::Result<(), Failure> {
        self.send(|out| {
            frontend::startup_message(
                [
                    ("user", params.user.as_str()),
                    ("database", params.dbname.as_str()),
                    ("application_name", "zcache-initial-sync"),
                    // Text values in binary COPY output are in the client encoding.
                    ("client_encoding", "UTF8"),
                ],
                out,
            )
        })?;
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, from, to) = self.next_message()?;
            let body = &self.buf[from..to];
            match tag {
                b'R' => {
                    let auth = Authentication::parse(body)?;
                    if let Some(reply) = auth.reply(params, &mut scram)? {
                        self.send(|out| reply.encode(out))?;
                    }
                }
                b'E' => return Err(Failure::Server(ServerError::parse(body))),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse, NegotiateProtocolVersion.
                b'S' | b'K' | b'N' | b'v' => {}
                other => return Err(unexpected(other, "connecting").into()),
            }
        }
    }

    /// Runs `sql` (a simple query that returns no rows) up to its ReadyForQuery.
    fn execute(&mut self, sql: &str) -> std::result::Result<(), Failure> {
        self.send(|out| frontend::query(sql, out))?;
        self.until_ready(|_| Ok(()))
    }

    /// Reads messages up to ReadyForQuery; `on_copy_data` gets each CopyData payload. The first
    /// error (the server's, or `on_copy_data`'s) is returned; a server error only once the server
    /// is ready again.
    fn until_ready(&mut self, mut on_copy_data: impl FnMut(&[u8]) -> Result<()>) -> std::result::Result<(), Failure> {
        let mut server_error = None;
        let mut copying = false;
        loop {
            let (tag, from, to) = self.next_message()?;
            match tag {
                b'd' if copying => on_copy_data(&self.buf[from..to])?,
                b'H' => copying = true,
                b'c' => copying = false,
                b'E' => {
                    server_error.get_or_insert_with(|| ServerError::parse(&self.buf[from..to]));
                    copying = false;
                }
                b'Z' => {
                    return match server_error {
                        Some(e) => Err(Failure::Server(e)),
                        None => Ok(()),
                    };
                }
                // CommandComplete, EmptyQueryResponse, NoticeResponse, ParameterStatus, notification.
                b'C' | b'I' | b'N' | b'S' | b'A' => {}
                other => return Err(unexpected(other, "a query").into()),
            }
        }
    }
}

impl Drop for Connection {
    /// Says goodbye, so the server logs no "unexpected EOF"; best effort.
    fn drop(&mut self) {
        let _ = self.send(|out| {
            frontend::terminate(out);
            Ok(())
        });
    }
}

fn unexpected(tag: u8, during: &str) -> Error {
    Error::Protocol { detail: format!("unexpected Postgres message {:?} during {during}", char::from(tag)) }
}

/// An Authentication request (message `R`) of the server.
enum Authentication<'a> {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a [u8]> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Other(i32),
}

/// A password message to send back.
enum AuthReply {
    Password(Vec<u8>),
    SaslInitial(Vec<u8>),
    Sasl(Vec<u8>),
}

impl AuthReply {
    fn encode(&self, out: &mut BytesMut) -> io::Result<()> {
        match self {
            AuthReply::Password(p) => frontend::password_message(p, out),
            AuthReply::SaslInitial(data) => frontend::sasl_initial_response(SCRAM_SHA_256, data, out),
            AuthReply::Sasl(data) => frontend::sasl_response(data, out),
        }
    }
}

impl<'a> Authentication<'a> {
    fn parse(body: &'a [u8]) -> Result<Self> {
        let malformed = |detail: &str| Error::Malformed { what: "Postgres authentication request", detail: detail.to_owned() };
        let (code, rest) = match body.split_first_chunk::<4>() {
            Some((code, rest)) => (i32::from_be_bytes(*code), rest),
            None => return Err(malformed("shorter than 4 bytes")),
        };
        Ok(match code {
            0 => Authentication::Ok,
            3 => Authentication::Cleartext,
            5 => Authentication::Md5 { salt: *rest.first_chunk::<4>().ok_or_else(|| malformed("md5 request without a salt"))? },
            10 => Authentication::Sasl { mechanisms: rest.split(|&b| b == 0).filter(|m| !m.is_empty()).collect() },
            11 => Authentication::SaslContinue(rest),
            12 => Authentication::SaslFinal(rest),
            other => Authentication::Other(other),
        })
    }

    /// What to answer, if anything.
    fn reply(&self, params: &ConnectParams, scram: &mut Option<ScramSha256>) -> Result<Option<AuthReply>> {
        let password = || {
            params.password.as_deref().map(str::as_bytes).ok_or_else(|| Error::Upstream {
                detail: format!(
                    "authentication failed for {}: the server asks for a password and none was given \
                     (check the user and password of ZERO_UPSTREAM_DB)",
                    params.describe()
                ),
            })
        };
        let scram_failed = |e: io::Error| Error::Upstream {
            detail: format!("authentication failed for {}: SCRAM-SHA-256: {e}", params.describe()),
        };
        Ok(match self {
            Authentication::Ok => None,
            Authentication::Cleartext => Some(AuthReply::Password(password()?.to_vec())),
            Authentication::Md5 { salt } => {
                Some(AuthReply::Password(md5_hash(params.user.as_bytes(), password()?, *salt).into_bytes()))
            }
            Authentication::Sasl { mechanisms } => {
                if !mechanisms.contains(&SCRAM_SHA_256.as_bytes()) {
                    let offered: Vec<_> = mechanisms.iter().map(|m| String::from_utf8_lossy(m)).collect();
                    return Err(Error::Upstream {
                        detail: format!(
                            "authentication of {} needs SASL mechanism {} (the initial sync's copier speaks only {SCRAM_SHA_256}, without TLS)",
                            params.describe(),
                            offered.join(", ")
                        ),
                    });
                }
                // No TLS, hence no channel binding ("n,,"), as libpq does without TLS.
                let state = scram.insert(ScramSha256::new(password()?, ChannelBinding::unsupported()));
                Some(AuthReply::SaslInitial(state.message().to_vec()))
            }
            Authentication::SaslContinue(data) => {
                let state = scram.as_mut().ok_or_else(|| unexpected(b'R', "SCRAM authentication (a continue before the start)"))?;
                state.update(data).map_err(scram_failed)?;
                Some(AuthReply::Sasl(state.message().to_vec()))
            }
            Authentication::SaslFinal(data) => {
                let state = scram.as_mut().ok_or_else(|| unexpected(b'R', "SCRAM authentication (a final before the start)"))?;
                state.finish(data).map_err(scram_failed)?;
                None
            }
            Authentication::Other(code) => {
                return Err(Error::Upstream {
                    detail: format!(
                        "authentication of {} needs a method the initial sync's copier does not speak (request {code}; \
                         it speaks trust, password, md5 and scram-sha-256)",
                        params.describe()
                    ),
                });
            }
        })
    }
}

/// A connection that reads tables in the exported snapshot.
pub struct SnapshotReader {
    connection: Connection,
    params: ConnectParams,
    snapshot: String,
}

impl SnapshotReader {
    pub fn connect(params: &ConnectParams, snapshot: &str) -> Result<Self> {
        let stream = Connection::open(params).map_err(|e| io_error(params, "connecting", &e))?;
        stream.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(|e| io_error(params, "connecting", &e))?;
        let mut connection =
            Connection { stream, buf: vec![0; READ_BUFFER_BYTES], start: 0, end: 0, out: BytesMut::with_capacity(256) };
        connection.start(params).map_err(|f| failure(params, "connecting", f))?;
        connection.stream.set_read_timeout(None).map_err(|e| io_error(params, "connecting", &e))?;
        Ok(SnapshotReader { connection, params: params.clone(), snapshot: snapshot.to_owned() })
    }

    /// Runs `statement` (a `COPY … TO STDOUT`) in a new transaction on the snapshot and gives
    /// `sink` each CopyData message's payload (Postgres sends one per row). A `sink` error stops
    /// the copy (the connection is then unusable: drop it).
    pub fn copy(&mut self, statement: &str, mut sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            self.snapshot.replace('\'', "''")
        );
        let params = &self.params;
        let snapshot = &self.snapshot;
        self.connection.execute(&begin).map_err(|f| match f {
            Failure::Server(e) => Error::Upstream {
                detail: format!(
                    "the exported snapshot {snapshot} cannot be imported on {} ({}): the replication connection \
                     that exported it closed or was not idle; the initial sync must start over",
                    params.describe(),
                    e.text()
                ),
            },
            Failure::Client(e) => client_error(params, "importing the snapshot", e),
        })?;
        let connection = &mut self.connection;
        connection.send(|out| frontend::query(statement, out)).map_err(|e| client_error(params, statement, e))?;
        connection.until_ready(&mut sink).map_err(|f| failure(params, statement, f))?;
        self.connection.execute("COMMIT").map_err(|f| failure(params, "COMMIT", f))
    }
}

/// An actionable message for what went wrong talking to upstream.
fn failure(params: &ConnectParams, doing: &str, f: Failure) -> Error {
    match f {
        Failure::Server(e) => {
            let target = params.describe();
            let detail = if e.code == SQLSTATE_INVALID_PASSWORD || e.code == SQLSTATE_INVALID_AUTHORIZATION {
                format!("authentication failed for {target}: {} (check the user and password of ZERO_UPSTREAM_DB)", e.text())
            } else {
                format!("{doing} on {target} failed: {} (SQLSTATE {})", e.text(), e.code)
            };
            Error::Upstream { detail }
        }
        Failure::Client(e) => client_error(params, doing, e),
    }
}

/// Our own errors (a sink's, a malformed stream's) pass through; I/O errors name the server.
fn client_error(params: &ConnectParams, doing: &str, e: Error) -> Error {
    match e {
        Error::Io(io) => io_error(params, doing, &io),
        other => other,
    }
}

fn io_error(params: &ConnectParams, doing: &str, e: &io::Error) -> Error {
    let target = params.describe();
    let detail = match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            format!("{doing} on {target}: the connection closed unexpectedly ({e})")
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{doing} on {target} failed: no answer within {}s", CONNECT_TIMEOUT.as_secs())
        }
        _ => format!("{doing} on {target} failed: {e} (is Postgres running and reachable there?)"),
    };
    Error::Upstream { detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn auth_ok() -> Vec<u8> {
        [message(b'R', &0i32.to_be_bytes()), message(b'S', b"server_version\x0015\x00"), ready()].concat()
    }

    fn ready() -> Vec<u8> {
        message(b'Z', b"I")
    }

    fn error(code: &str, text: &str) -> Vec<u8> {
        message(b'E', format!("SERROR\0VERROR\0C{code}\0M{text}\0\0").as_bytes())
    }

    /// A server on a loopback port that reads the startup message, then answers each of the next
    /// messages (by count) with the given bytes, then sends `tail` and closes.
    fn fake_server(replies: Vec<Vec<u8>>, tail: Vec<u8>) -> (ConnectParams, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("address").port();
        let server = thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accepts");
            let mut length = [0u8; 4];
            socket.read_exact(&mut length).expect("startup length");
            let mut startup = vec![0; u32::from_be_bytes(length) as usize - 4];
            socket.read_exact(&mut startup).expect("startup");
            for (i, reply) in replies.into_iter().enumerate() {
                if i > 0 {
                    let mut header = [0u8; 5];
                    socket.read_exact(&mut header).expect("a message");
                    let mut body = vec![0; u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
                    socket.read_exact(&mut body).expect("its body");
                }
                socket.write_all(&reply).expect("replies");
            }
            let _ = socket.write_all(&tail);
        });
        let params = ConnectParams {
            host: "127.0.0.1".into(),
            port,
            user: "u".into(),
            password: Some("secret".into()),
            dbname: "db".into(),
        };
        (params, server)
    }

    fn copy_out_response() -> Vec<u8> {
        message(b'H', &[1, 0, 0])
    }

    /// BEGIN's answer, then the COPY's start and `rows` CopyData messages.
    fn copy_replies(rows: &[&[u8]]) -> Vec<Vec<u8>> {
        let begin = [message(b'C', b"BEGIN\0"), message(b'C', b"SET\0"), ready()].concat();
        let mut copy = copy_out_response();
        for row in rows {
            copy.extend(message(b'd', row));
        }
        vec![auth_ok(), begin, copy]
    }

    fn copy_all(params: &ConnectParams) -> (Vec<Vec<u8>>, Result<()>) {
        let mut got = Vec::new();
        let result = SnapshotReader::connect(params, "snap").and_then(|mut reader| {
            reader.copy("COPY t TO STDOUT (FORMAT binary)", |payload| {
                got.push(payload.to_vec());
                Ok(())
            })
        });
        (got, result)
    }

    #[test]
    fn copy_data_payloads_arrive_in_order_and_the_copy_commits() {
        let rows: Vec<Vec<u8>> = (0..5000u32).map(|i| format!("row {i}").repeat(1 + (i % 50) as usize).into_bytes()).collect();
        let borrowed: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        let mut replies = copy_replies(&borrowed);
        let last = replies.last_mut().expect("the copy");
        last.extend([message(b'c', b""), message(b'C', b"COPY 5000\0"), ready()].concat());
        replies.push([message(b'C', b"COMMIT\0"), ready()].concat());
        let (params, server) = fake_server(replies, Vec::new());
        let (got, result) = copy_all(&params);
        result.expect("copies");
        assert_eq!(got, rows);
        server.join().expect("server");
    }

    #[test]
    fn a_connection_closed_mid_copy_is_an_upstream_error() {
        let replies = copy_replies(&[b"one", b"two"]);
        let (params, server) = fake_server(replies, message(b'd', b"thr")[..6].to_vec());
        let (got, result) = copy_all(&params);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        let err = result.expect_err("interrupted");
        assert!(matches!(err, Error::Upstream { .. }), "{err}");
        assert!(err.to_string().contains("the connection closed unexpectedly"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn an_impossible_message_length_is_malformed() {
        let replies = copy_replies(&[b"one"]);
        let (params, server) = fake_server(replies, vec![b'd', 0, 0, 0, 2]);
        let (_, result) = copy_all(&params);
        let err = result.expect_err("malformed");
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("claims a length of 2 bytes"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn an_unexpected_message_is_a_protocol_error() {
        let replies = copy_replies(&[b"one"]);
        let (params, server) = fake_server(replies, message(b'D', b"\0\0"));
        let (_, result) = copy_all(&params);
        let err = result.expect_err("unexpected");
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn a_server_error_during_the_copy_carries_its_message() {
        let mut replies = copy_replies(&[b"one"]);
        replies.last_mut().expect("the copy").extend([error("57014", "canceling statement due to user request"), ready()].concat());
        let (params, server) = fake_server(replies, Vec::new());
        let (_, result) = copy_all(&params);
        let err = result.expect_err("server error");
        assert!(matches!(err, Error::Upstream { .. }), "{err}");
        assert!(err.to_string().contains("canceling statement due to user request (SQLSTATE 57014)"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn a_sink_error_stops_the_copy() {
        let (params, server) = fake_server(copy_replies(&[b"one", b"two"]), Vec::new());
        let mut reader = SnapshotReader::connect(&params, "snap").expect("connects");
        let err = reader
            .copy("COPY t TO STDOUT (FORMAT binary)", |_| Err(Error::Protocol { detail: "the sink says stop".into() }))
            .expect_err("stopped");
        assert_eq!(err.to_string(), "replication protocol violation: the sink says stop");
        drop(reader);
        server.join().expect("server");
    }

    #[test]
    fn a_cleartext_password_is_sent_when_asked() {
        let replies = vec![message(b'R', &3i32.to_be_bytes()), auth_ok()];
        let (params, server) = fake_server(replies, Vec::new());
        SnapshotReader::connect(&params, "snap").expect("connects");
        server.join().expect("server");
    }

    #[test]
    fn a_password_request_without_a_password_names_the_setting() {
        let (mut params, server) = fake_server(vec![message(b'R', &5i32.to_be_bytes().iter().chain(b"salt").copied().collect::<Vec<_>>())], Vec::new());
        params.password = None;
        let err = SnapshotReader::connect(&params, "snap").err().expect("no password");
        assert!(err.to_string().contains("asks for a password and none was given"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn an_unsupported_method_or_mechanism_is_named() {
        let (params, server) = fake_server(vec![message(b'R', &7i32.to_be_bytes())], Vec::new());
        let err = SnapshotReader::connect(&params, "snap").err().expect("gss");
        assert!(err.to_string().contains("request 7"), "{err}");
        server.join().expect("server");
        let sasl = [&10i32.to_be_bytes()[..], b"SCRAM-SHA-256-PLUS\0\0"].concat();
        let (params, server) = fake_server(vec![message(b'R', &sasl)], Vec::new());
        let err = SnapshotReader::connect(&params, "snap").err().expect("plus only");
        assert!(err.to_string().contains("needs SASL mechanism SCRAM-SHA-256-PLUS"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn a_rejected_login_is_an_authentication_failure() {
        let (params, server) = fake_server(vec![error("28P01", "password authentication failed for user \"u\"")], Vec::new());
        let err = SnapshotReader::connect(&params, "snap").err().expect("rejected");
        assert!(err.to_string().contains("authentication failed for u@127.0.0.1"), "{err}");
        assert!(err.to_string().contains("ZERO_UPSTREAM_DB"), "{err}");
        server.join().expect("server");
    }

    #[test]
    fn error_fields_parse_leniently() {
        let e = ServerError::parse(b"SERROR\0C42P01\0Mno such table\0Dsee here\0\0");
        assert_eq!((e.code.as_str(), e.text().as_str()), ("42P01", "no such table (see here)"));
        let e = ServerError::parse(b"Mcut off");
        assert_eq!(e.message, "cut off");
        assert_eq!(ServerError::parse(b"").message, "");
    }
}
