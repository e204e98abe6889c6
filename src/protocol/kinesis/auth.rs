//! AWS Signature Version 4 for the Kinesis API. Without configured keys, any request with a
//! well-formed `Authorization` header is accepted, as the emulators do. With `[auth]` keys
//! in the config, spate recomputes the signature (canonical request, string to sign, HMAC
//! key chain), and checks the credential scope and the date window, answering with the AWS
//! error names. Pure functions over the request head and body; any core.

use hmac::{Hmac, KeyInit, Mac};
use hyper::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::config::AccessKey;
use crate::protocol::kinesis::errors::KinesisError;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's X-Amz-Date may be from the server's clock, in seconds.
const CLOCK_SKEW_S: i64 = 300;

/// The parts of an `Authorization` header.
struct Authorization<'a> {
    access_key: &'a str,
    scope_date: &'a str,
    region: &'a str,
    service: &'a str,
    terminal: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn incomplete(what: &str, header: &str) -> KinesisError {
    KinesisError::new_auth(
        "IncompleteSignatureException",
        format!("{what} Authorization={header}"),
    )
}

fn parse(header: &str) -> Result<Authorization<'_>, KinesisError> {
    let rest = header.strip_prefix(ALGORITHM).ok_or_else(|| {
        incomplete(
            "Authorization header requires the AWS4-HMAC-SHA256 algorithm.",
            header,
        )
    })?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(value) = part.strip_prefix("Credential=") {
            credential = Some(value);
        } else if let Some(value) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(value);
        } else if let Some(value) = part.strip_prefix("Signature=") {
            signature = Some(value);
        }
    }
    let mut missing = Vec::new();
    if credential.is_none() {
        missing.push("Credential");
    }
    if signed_headers.is_none() {
        missing.push("SignedHeaders");
    }
    if signature.is_none() {
        missing.push("Signature");
    }
    if !missing.is_empty() {
        let what = missing
            .iter()
            .map(|m| format!("Authorization header requires '{m}' parameter."))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(incomplete(&what, header));
    }
    let credential = credential.unwrap_or_default();
    let mut scope = credential.split('/');
    let (Some(access_key), Some(scope_date), Some(region), Some(service), Some(terminal), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(incomplete(
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term,",
            header,
        ));
    };
    Ok(Authorization {
        access_key,
        scope_date,
        region,
        service,
        terminal,
        signed_headers: signed_headers.unwrap_or_default(),
        signature: signature.unwrap_or_default(),
    })
}

/// Checks a request's signature. `keys` empty: presence and shape only.
///
/// # Errors
/// The AWS authentication error for the first problem found.
pub fn check(
    parts: &Parts,
    body: &[u8],
    keys: &[AccessKey],
    now_unix_s: i64,
) -> Result<(), KinesisError> {
    let header = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let query_auth = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Algorithm=")));
    let header = match (header, query_auth) {
        (None, false) => {
            return Err(KinesisError::new_auth(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token".to_string(),
            ));
        }
        (Some(_), true) => {
            return Err(KinesisError::new_auth(
                "InvalidSignatureException",
                "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header."
                    .to_string(),
            ));
        }
        (None, true) => {
            // Pre-signed URLs are not used by Kinesis clients; accept their shape only
            // when no keys are configured.
            if keys.is_empty() {
                return Ok(());
            }
            return Err(KinesisError::new_auth(
                "InvalidSignatureException",
                "Query-string authentication is not supported by spate".to_string(),
            ));
        }
        (Some(header), false) => header,
    };
    let auth = parse(header)?;
    let date = parts
        .headers
        .get("x-amz-date")
        .or_else(|| parts.headers.get("date"))
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.", header))?;
    if keys.is_empty() {
        return Ok(());
    }
    let Some(key) = keys.iter().find(|k| k.access_key == auth.access_key) else {
        return Err(KinesisError::new_auth(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.".to_string(),
        ));
    };
    let invalid = |message: String| KinesisError::new_auth("InvalidSignatureException", message);
    let request_s =
        parse_amz_date(date).ok_or_else(|| invalid(format!("Invalid X-Amz-Date {date}")))?;
    if (request_s - now_unix_s).abs() > CLOCK_SKEW_S {
        return Err(invalid(format!(
            "Signature expired: {date} is now earlier or later than the server's time by more than 5 minutes."
        )));
    }
    if !date.starts_with(auth.scope_date)
        || auth.service != "kinesis"
        || auth.terminal != "aws4_request"
    {
        return Err(invalid(format!(
            "Credential should be scoped to a valid date, the kinesis service and aws4_request, not {}/{}/{}/{}",
            auth.scope_date, auth.region, auth.service, auth.terminal
        )));
    }
    let canonical = canonical_request(parts, body, auth.signed_headers);
    let scope = format!(
        "{}/{}/{}/{}",
        auth.scope_date, auth.region, auth.service, auth.terminal
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut signing_key = hmac(
        format!("AWS4{}", key.secret).as_bytes(),
        auth.scope_date.as_bytes(),
    );
    for part in [auth.region, auth.service, auth.terminal] {
        signing_key = hmac(&signing_key, part.as_bytes());
    }
    let expected = hex(&hmac(&signing_key, string_to_sign.as_bytes()));
    let same = expected.len() == auth.signature.len()
        && expected
            .bytes()
            .zip(auth.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .to_string(),
        ));
    }
    Ok(())
}

fn canonical_request(parts: &Parts, body: &[u8], signed_headers: &str) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(parts.method.as_str());
    out.push('\n');
    out.push_str(parts.uri.path());
    out.push('\n');
    let mut query: Vec<&str> = parts
        .uri
        .query()
        .map(|q| q.split('&').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    query.sort_unstable();
    out.push_str(&query.join("&"));
    out.push('\n');
    for name in signed_headers.split(';') {
        let values: Vec<String> = if name == "host" && parts.headers.get("host").is_none() {
            // HTTP/2 carries the host as the :authority pseudo-header.
            parts
                .uri
                .authority()
                .map(|a| vec![a.to_string()])
                .unwrap_or_default()
        } else {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| collapse(&String::from_utf8_lossy(v.as_bytes())))
                .collect()
        };
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(signed_headers);
    out.push('\n');
    let payload = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| hex(&Sha256::digest(body)), str::to_string);
    out.push_str(&payload);
    out
}

fn collapse(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `20261122T101500Z` as unix seconds.
fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse_to_unix_seconds() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20261122T101500Z"), Some(1_795_342_500));
        assert_eq!(parse_amz_date("2026-11-22"), None);
    }
}
