//! `bench-native-hello ADDR`: the same answer as the hello component, from a
//! native axum server on a multi-threaded tokio runtime, so the benchmark can
//! say what fraction of native speed the wasm host reaches on this machine.

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3900".to_string());
    let app = Router::new().fallback(get(|| async { "Hello, Bazaar!\n" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
