//! The HTTP trigger through real sockets: routing, Spin's headers, private
//! routes, service chaining, self requests and the outbound allow-list.

mod common;

use common::AppDir;

const ROUTES: &str = r#"
spin_manifest_version = 2
[application]
name = "routes"

[[trigger.http]]
route = "/..."
component = "catch-all"
[[trigger.http]]
route = "/api/..."
component = "api"
[[trigger.http]]
route = "/api/users/me"
component = "me"
[[trigger.http]]
route = "/api/users/:user_id"
component = "user"
[[trigger.http]]
route = { private = true }
component = "back"
[[trigger.http]]
route = { private = true }
component = "BACK-2"

[component.catch-all]
source = "{probe}"
environment = { COMPONENT = "catch-all" }
[component.api]
source = "{probe}"
environment = { COMPONENT = "api" }
allowed_outbound_hosts = ["http://back.spin.internal", "http://BACK-2.spin.internal", "http://self"]
[component.me]
source = "{probe}"
environment = { COMPONENT = "me" }
[component.user]
source = "{probe}"
environment = { COMPONENT = "user" }
[component.back]
source = "{probe}"
environment = { COMPONENT = "back" }
[component.BACK-2]
source = "{probe}"
environment = { COMPONENT = "BACK-2" }
"#;

#[tokio::test]
async fn routes_follow_spin_precedence() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    // The probe answers 200 for an empty path info or `/headers`, and its
    // own 404 (naming itself) for any other.
    for (path, component, status) in [
        ("/api/users/me", "me", 200),
        ("/api/users/42", "user", 200),
        ("/api/users/42/headers", "api", 404),
        ("/api/headers", "api", 200),
        ("/api", "api", 200),
        ("/", "catch-all", 200),
        ("/elsewhere/headers", "catch-all", 404),
    ] {
        let reply = host.get(path).await;
        assert_eq!(
            (reply.0, &reply.1["component"]),
            (status, &serde_json::json!(component)),
            "{path}: {}",
            reply.1
        );
    }
    // A private component is never routed to from outside.
    let (_, body) = host.get("/headers").await;
    assert_eq!(body["component"], "catch-all");
    // The banner is printed before the first request is served; every
    // public route's line is in, and the private ones are not listed.
    let mut banner = String::new();
    for component in ["catch-all", "api", "me", "user"] {
        banner = host.wait_for_stdout(&format!("  {component}: "));
    }
    assert!(
        banner.contains(&format!("  api: {}/api (wildcard)", host.base)),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("  me: {}/api/users/me\n", host.base)),
        "{banner}"
    );
    let listed: std::collections::BTreeSet<&str> = banner
        .lines()
        .filter(|line| line.contains(&format!(": {}", host.base)))
        .filter_map(|line| line.trim_start().split(": ").next())
        .collect();
    assert_eq!(
        listed,
        ["api", "catch-all", "me", "user"].into(),
        "private routes are not listed: {banner}"
    );
}

/// The component that answered a request written by hand (clients such as
/// reqwest resolve `..` before sending, which is the point here).
async fn raw_route(host: &common::Host, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host.socket_address())
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    // The JSON body, whatever the framing (chunked here).
    let json = match (response.find('{'), response.rfind('}')) {
        (Some(start), Some(end)) => &response[start..=end],
        _ => "",
    };
    let body: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    body["component"]
        .as_str()
        .map_or_else(|| format!("(none) {response}"), str::to_string)
}

/// #12: paths are matched as sent, segment by segment. `..` climbs into
/// no other route (it is a segment like any other, left to the component's
/// path info), `%2F` separates nothing, and empty segments (`//`) are
/// skipped.
#[tokio::test]
async fn paths_are_matched_as_sent() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    for (path, component) in [
        ("/api/users/../users/me", "api"),
        ("/elsewhere/../api/users/me", "catch-all"),
        ("/api%2Fusers%2Fme", "catch-all"),
        ("/api/users%2Fme", "api"),
        ("//api//users//me", "me"),
        ("/api/users/%2E%2E", "user"),
    ] {
        assert_eq!(raw_route(&host, path).await, component, "{path}");
    }
}

#[tokio::test]
async fn spin_headers_describe_the_match() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    let (status, h) = host.get("/api/headers?x=1").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["spin-full-url"], host.url("/api/headers?x=1"));
    assert_eq!(h["spin-path-info"], "/headers");
    assert_eq!(h["spin-matched-route"], "/api/...");
    assert_eq!(h["spin-raw-component-route"], "/api/...");
    assert_eq!(h["spin-component-route"], "/api");
    assert_eq!(h["spin-base-path"], "/");
    assert!(
        h["spin-client-addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{h}"
    );

    let (_, h) = host.get("/api/users/42").await;
    assert_eq!(h["spin-path-match-user-id"], "42", "{h}");
    assert_eq!(h["spin-path-info"], "");
}

/// The raw status line of a request written by hand (clients refuse to send
/// such a `Host`).
async fn status_with_host(host: &common::Host, header: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host.socket_address())
        .await
        .unwrap();
    let request =
        format!("GET /api/headers HTTP/1.1\r\nHost: {header}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_string()
}

/// A component that answers before reading the request body (a 404 here,
/// the gateway's 413) must not make the server reset a client that is still
/// sending: most clients write the whole body, then read the response.
#[tokio::test]
async fn an_early_answer_reaches_a_client_still_sending_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    let mut stream = tokio::net::TcpStream::connect(host.socket_address())
        .await
        .unwrap();
    let body = vec![b'x'; 4 * 1024 * 1024];
    let head = format!(
        "POST /api/no-such-operation HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body)
        .await
        .expect("the server keeps reading the body it did not need");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("the response, not a reset");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(
        response.contains("probe has no POST"),
        "the component's own answer: {response}"
    );
}

/// Request headers are limited by their size, exactly: a head of 100 KiB
/// fits hyper's read buffer whole (hyper alone would pass it on), and is a
/// 431 with a problem document; one just under the limit reaches the
/// component.
#[tokio::test]
async fn oversized_request_headers_are_431_from_the_host() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    // Two headers of `kib` KiB each.
    let with_filler = |kib: usize| {
        let filler = "f".repeat(kib * 1024);
        common::send(
            reqwest::Client::new()
                .get(host.url("/api/headers"))
                .header("x-filler-1", &filler)
                .header("x-filler-2", &filler),
        )
    };
    let (status, problem) = with_filler(50).await;
    assert_eq!(status, 431, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("more than the 65536"),
        "says the limit: {problem}"
    );
    let (status, echoed) = with_filler(30).await;
    assert_eq!(status, 200, "60 KiB of headers are served");
    assert_eq!(echoed["x-filler-2"].as_str().map(str::len), Some(30 * 1024));
}

/// A `Host` header that is not an authority would move the path or query
/// the component sees (`x/admin` + `/public` = `/admin/public`): 400.
#[tokio::test]
async fn a_host_header_must_be_an_authority() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    for bad in ["x/admin", "x?a=1", "x#f", "user@x", "x y"] {
        let status = status_with_host(&host, bad).await;
        assert!(status.contains(" 400 "), "Host: {bad}: {status}");
    }
    for good in [
        "example.test",
        "example.test:8080",
        "127.0.0.1:3000",
        "[::1]:3000",
    ] {
        let status = status_with_host(&host, good).await;
        assert!(status.contains(" 200 "), "Host: {good}: {status}");
    }
}

#[tokio::test]
async fn clients_cannot_forge_spin_headers() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    let request = reqwest::Client::new()
        .get(host.url("/api/headers"))
        .header("spin-client-addr", "10.0.0.1:1")
        .header("spin-path-match-admin", "yes");
    let (_, h) = common::send(request).await;
    assert!(
        h["spin-client-addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{h}"
    );
    assert!(h.get("spin-path-match-admin").is_none(), "{h}");
}

#[tokio::test]
async fn unmatched_path_is_404_and_well_known_health_answers() {
    let app = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "one"
[[trigger.http]]
route = "/hello"
component = "hello"
[component.hello]
source = "{probe}"
"#,
    );
    let host = app.start(&[]);
    assert_eq!(host.get("/nope").await.0, 404);
    assert_eq!(host.get("/hello/deeper").await.0, 404);
    assert_eq!(host.get("/hello").await.0, 200);
    let (status, body) = host.get("/.well-known/spin/health").await;
    assert_eq!((status, body.as_str()), (200, Some("OK")));
}

#[tokio::test]
async fn chaining_reaches_a_private_component_in_process() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    let inner = host
        .fetch_via("/api", "http://back.spin.internal/headers")
        .await;
    assert_eq!(inner["component"], "back");
    assert_eq!(inner["spin-path-info"], "/headers");
    assert_eq!(inner["spin-client-addr"], "0.0.0.0:0");
    assert_eq!(inner["spin-matched-route"], "/...");
    // As in Spin: the chaining host is no `Host`, so the URL says localhost.
    assert_eq!(inner["spin-full-url"], "http://localhost/headers");
    // Ids may be UPPERCASE words, as in Spin, and are reached as written.
    let inner = host
        .fetch_via("/api", "http://BACK-2.spin.internal/headers")
        .await;
    assert_eq!(inner["component"], "BACK-2");
}

#[tokio::test]
async fn self_requests_reach_the_application_through_its_routes() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    // As in Spin: `http://self.alt` is the application's own listener, so
    // the request is routed (to `user`, not the caller) and arrives as from
    // any local client.
    let inner = host
        .fetch_via("/api", "http://self.alt/api/users/42?x=1")
        .await;
    assert_eq!(inner["component"], "user", "{inner}");
    assert_eq!(inner["spin-path-match-user-id"], "42", "{inner}");
    assert_eq!(inner["uri"], host.url("/api/users/42?x=1"), "{inner}");
    assert_eq!(
        inner["spin-full-url"],
        host.url("/api/users/42?x=1"),
        "{inner}"
    );
    let client = inner["spin-client-addr"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{inner}");
    // Without `http://self` in its allow-list, a component may not.
    host.assert_fetch_denied("", "http://self.alt/api").await;
    host.assert_fetch_denied("", "http://self.alt:8080/api")
        .await;
    host.wait_for_stderr(
        r#"add \"http://self\" to the component's allowed_outbound_hosts"#,
        2,
        std::time::Duration::from_secs(10),
    );
}

#[tokio::test]
async fn outbound_requests_need_an_allowed_host() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&[]);
    // `catch-all` may reach nothing at all.
    host.assert_fetch_denied("", "http://back.spin.internal/headers")
        .await;
    // `api` may reach `back` but not this very server over a socket.
    host.assert_fetch_denied("/api", &host.url("/headers"))
        .await;
    host.wait_for_stderr(
        "outbound request denied",
        1,
        std::time::Duration::from_secs(10),
    );
}

/// One probe that may call any port on loopback.
const LOOPBACK_OUT: &str = r#"
spin_manifest_version = 2
[application]
name = "out"
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "{probe}"
allowed_outbound_hosts = ["http://127.0.0.1:*"]
"#;

/// A failed pooled request tells the guest what failed: a refused
/// connection (nothing was sent, safe to retry) is not a server that took
/// the request and hung up (it may have acted on it).
#[tokio::test]
async fn outbound_failures_say_whether_the_request_was_sent() {
    let app = AppDir::new(LOOPBACK_OUT);
    let host = app.start(&[]);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // A server that reads the request and closes without answering.
    let hang_up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_up_port = hang_up.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in hang_up.incoming() {
            let mut stream = stream.unwrap();
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
        }
    });
    for (port, expected) in [
        (closed_port, "ConnectionRefused"),
        (hang_up_port, "HttpResponseIncomplete"),
    ] {
        let (status, body) = host
            .get(&format!("/fetch?url=http://127.0.0.1:{port}/"))
            .await;
        assert_eq!(status, 502, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(expected), "port {port}: {error}");
    }
}

#[tokio::test]
async fn allowed_outbound_request_goes_over_a_real_socket() {
    let app = AppDir::new(LOOPBACK_OUT);
    let host = app.start(&[]);
    // The host's own well-known endpoint is a real HTTP server on loopback.
    let (status, body) = host
        .get(&format!(
            "/fetch?url={}",
            host.url("/.well-known/spin/health")
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 200);
    assert_eq!(body["body"], "OK");
}

/// Sends one HTTP/1.1 request on a new connection to `address` and reads
/// until the server closes it or answers (`Connection: close`).
async fn raw_request(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// #28: the listener holds at most `--max-connections` client connections;
/// one more is answered 503 with `Retry-After` (a problem document) and
/// closed, and a freed slot is served again.
#[tokio::test]
async fn connections_over_the_cap_are_refused_with_503() {
    let app = AppDir::new(ROUTES);
    let host = app.start(&["--max-connections", "2"]);
    let address = host.socket_address();
    let held: Vec<tokio::net::TcpStream> =
        futures::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(address.as_str())))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let answer = raw_request(&address, "/api/users/me").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("maximum of 2 open connections"), "{answer}");
    host.wait_for_stderr(
        "connection refused: the listener is at its cap",
        1,
        std::time::Duration::from_secs(5),
    );

    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = raw_request(&address, "/api/users/me").await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {answer}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
