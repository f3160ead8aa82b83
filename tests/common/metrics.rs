//! A replica's `/metrics` page as the tests read it: one plain HTTP/1.1 GET on the metrics
//! port, and the value of one sample (its name with labels, exactly as exposed).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The replica's `/metrics` response (headers and text) on the metrics port `port`.
pub async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the metrics port accepts");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// The value of the sample `name` (labels included) in a metrics text, if it is there.
pub fn try_sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The value of the sample `name` (labels included) in a metrics text; fails the test if absent.
pub fn sample(text: &str, name: &str) -> f64 {
    try_sample(text, name).unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}
