//! The HTTP API client: [`Api`] sends requests to a Herald server's HTTP endpoints
//! (`/api/v1/...`) over pooled keep-alive HTTP/1.1 connections, with an optional bearer token,
//! and decodes JSON answers. [`HttpError`] is the error of the helpers that require a 2xx.

use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Default time limit for one request (connect, send, whole answer).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A helper that requires a 2xx answer got `status` with `body` instead.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    /// HTTP status of the answer.
    pub status: u16,
    /// The answer's body, decoded as for [`Api::request`].
    pub body: Value,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpError {}

/// A client for Herald's HTTP API. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Decodes an answer body: JSON if it parses, `Value::Null` if empty, else a JSON string of
/// the (lossily decoded) text.
fn decode_body(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

impl Api {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`; a trailing `/` is
    /// ignored). With `token`, every request carries `Authorization: Bearer <token>` unless the
    /// caller passes its own `Authorization` header to [`Api::request_raw`].
    pub fn new(base: &str, token: Option<&str>) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            timeout: DEFAULT_TIMEOUT,
            http,
        }
    }

    /// The same client with another per-request time limit (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Api {
        self.timeout = timeout;
        self
    }

    /// The base URL requests are sent to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with an optional JSON body (`Content-Type: application/json`) and
    /// returns the status and the decoded body: JSON if it parses, `Value::Null` if empty, a
    /// JSON string otherwise. Any status is `Ok`; only transport failures are errors.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (headers, bytes): (&[(&str, &str)], Bytes) = match body {
            Some(v) => (
                &[("content-type", "application/json")],
                Bytes::from(serde_json::to_vec(v)?),
            ),
            None => (&[], Bytes::new()),
        };
        let (status, _headers, answer) = self.request_raw(method, path, headers, bytes).await?;
        Ok((status, decode_body(&answer)))
    }

    /// Sends `method path` with the given headers and body, and returns the status, headers
    /// and body of the answer. The bearer token is added unless `headers` contains an
    /// `Authorization` header. `path` may carry a query string.
    pub async fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<(u16, HeaderMap, Bytes)> {
        let method = Method::from_bytes(method.as_bytes())
            .with_context(|| format!("invalid HTTP method {method:?}"))?;
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(&url)
            .body(Full::new(body))
            .with_context(|| format!("invalid request URL {url:?}"))?;
        let req_headers = req.headers_mut();
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("invalid header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("invalid value for header {name}"))?;
            req_headers.append(name, value);
        }
        if let Some(token) = &self.token
            && !req_headers.contains_key(AUTHORIZATION)
        {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("token is not a valid header value")?;
            req_headers.insert(AUTHORIZATION, value);
        }
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .with_context(|| format!("{method} {url} failed"))?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .with_context(|| format!("{method} {url}: reading the answer failed"))?
                .to_bytes();
            anyhow::Ok((parts.status.as_u16(), parts.headers, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow!("{method} {url} timed out after {:?}", self.timeout))?
    }

    /// `request`, but a non-2xx answer is an [`HttpError`].
    pub async fn request_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(anyhow::Error::new(HttpError { status, body }));
        }
        Ok(body)
    }

    /// `POST /api/v1/publish` of `data` to `channels`; returns the answer
    /// (`{"channels":[{"channel":..,"offset":..,"delivered":..}]}`), or an [`HttpError`].
    pub async fn publish(&self, channels: &[&str], data: Value) -> anyhow::Result<Value> {
        let body = json!({"channels": channels, "data": data});
        self.request_ok("POST", "/api/v1/publish", Some(&body))
            .await
    }

    /// `GET /api/v1/stats`; returns the answer, or an [`HttpError`].
    pub async fn stats(&self) -> anyhow::Result<Value> {
        self.request_ok("GET", "/api/v1/stats", None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_decoded() {
        assert_eq!(decode_body(b""), Value::Null);
        assert_eq!(decode_body(b" \n"), Value::Null);
        assert_eq!(decode_body(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(decode_body(b"plain text"), json!("plain text"));
    }
}
