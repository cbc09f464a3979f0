//! W3C Trace Context (`traceparent`) and request ids.
//!
//! The gateway continues a client's trace or starts one, and every hop
//! (service call, Redis message) carries a `traceparent` whose trace id stays
//! the same while the parent id names the hop. Logs record both, so one
//! order's whole path can be followed across components.

use std::fmt;

pub const TRACEPARENT: &str = "traceparent";
pub const REQUEST_ID: &str = "x-request-id";

/// A parsed `traceparent`: version 00, 16-byte trace id, 8-byte parent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: nonzero(),
            parent_id: nonzero(),
            sampled: true,
        }
    }

    /// Parses a `traceparent` header; `None` for anything invalid, which the
    /// spec says to treat as absent.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = from_hex(trace)?;
        let parent_id: [u8; 8] = from_hex(parent)?;
        let flags: [u8; 1] = from_hex(flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The context for a new hop in the same trace.
    pub fn child(&self) -> Self {
        TraceContext {
            parent_id: nonzero(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { "01" } else { "00" };
        write!(
            f,
            "00-{}-{}-{flags}",
            to_hex(&self.trace_id),
            to_hex(&self.parent_id)
        )
    }
}

/// Keeps a client's request id when it is sane (1 to 128 visible ASCII
/// characters), otherwise makes a new one.
pub fn request_id(client_supplied: Option<&str>) -> String {
    match client_supplied {
        Some(id) if (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()) => {
            id.to_string()
        }
        _ => to_hex(&nonzero::<16>()),
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    while bytes == [0u8; N] {
        // Randomness is an import every WASI host provides; without it
        // there is no sensible id to give.
        getrandom::fill(&mut bytes).expect("the host provides randomness");
    }
    bytes
}

/// Exactly `N` bytes as lowercase hex (the spec allows no upper case).
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

/// Lowercase hex. Every request formats a few ids; `format!` per byte cost
/// an allocation each.
fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_prints_the_spec_example() {
        let ctx = TraceContext::parse(SAMPLE).unwrap();
        assert!(ctx.sampled);
        assert_eq!(ctx.to_string(), SAMPLE);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_child_keeps_the_trace_and_changes_the_parent() {
        let ctx = TraceContext::parse(SAMPLE).unwrap();
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.parent_id, ctx.parent_id);
        assert_eq!(TraceContext::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn invalid_headers_are_ignored() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        assert_eq!(request_id(None).len(), 32);
        assert_eq!(request_id(Some("has space")).len(), 32);
        assert_eq!(request_id(Some(&"x".repeat(200))).len(), 32);
    }
}
