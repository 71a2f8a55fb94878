//! W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/#traceparent-header),
//! read strictly: version `00` only, exactly `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, neither
//! id all zeros, one header field. Anything else is not a trace context to the broker: it is
//! ignored (the request is served, under a trace of the broker's own when it exports), as the
//! specification asks of an invalid one. Ignored or not, the agent's header never travels
//! upstream (`targets::headers` strips it with `tracestate` and `baggage`): the upstream gets
//! the broker's own, written by [`TraceParent::to_header`] from parsed ids, so nothing but 55
//! bytes of lowercase hex and dashes can come from the agent's header.

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the broker's.
    pub parent_id: [u8; 8],
    /// Only the `sampled` bit (01) is kept: other bits are not defined by version 00, and
    /// the broker passes on only what it understands.
    pub sampled: bool,
}

impl TraceParent {
    /// The one `traceparent` of a request, if it has exactly one and it is valid.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceParent> {
        let mut all = headers.get_all("traceparent").iter();
        match (all.next(), all.next()) {
            (Some(v), None) => TraceParent::parse(v.as_bytes()),
            _ => None,
        }
    }

    pub fn parse(v: &[u8]) -> Option<TraceParent> {
        if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flags = [0u8; 1];
        lower_hex(&v[3..35], &mut trace_id)?;
        lower_hex(&v[36..52], &mut parent_id)?;
        lower_hex(&v[53..55], &mut flags)?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// The header value `00-<trace id>-<parent id>-<flags>`.
    pub fn to_header(&self) -> http::HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex::encode_to_slice(self.trace_id, &mut out[3..35]).expect("32 hex digits");
        out[35] = b'-';
        hex::encode_to_slice(self.parent_id, &mut out[36..52]).expect("16 hex digits");
        out[52] = b'-';
        out[53..].copy_from_slice(if self.sampled { b"01" } else { b"00" });
        http::HeaderValue::from_bytes(&out).expect("hex and dashes are a valid header value")
    }
}

/// Lowercase hex only: `hex::decode` also takes uppercase, which the specification forbids.
fn lower_hex(src: &[u8], out: &mut [u8]) -> Option<()> {
    if !src.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode_to_slice(src, out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_reads_and_writes_back() {
        let tp = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(hex::encode(tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert_eq!(tp.to_header(), GOOD);
    }

    #[test]
    fn anything_but_a_strict_version_00_value_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn two_header_fields_are_ignored() {
        let mut h = http::HeaderMap::new();
        h.append("traceparent", GOOD.parse().unwrap());
        assert!(TraceParent::from_headers(&h).is_some());
        h.append("traceparent", GOOD.parse().unwrap());
        assert_eq!(TraceParent::from_headers(&h), None);
    }

    #[test]
    fn only_the_sampled_bit_is_passed_on() {
        let tp =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert!(tp.to_header().to_str().unwrap().ends_with("-01"));
        let tp =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert!(tp.to_header().to_str().unwrap().ends_with("-00"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever bytes arrive, a value is accepted only when it is exactly the strict
        /// shape, and what the broker writes back is that shape (so nothing else can travel).
        #[test]
        fn accepted_values_are_exactly_the_strict_shape(v in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Some(tp) = TraceParent::parse(&v) {
                prop_assert_eq!(v.len(), 55);
                let written = tp.to_header();
                let w = written.as_bytes();
                prop_assert_eq!(&w[..52], &v[..52]);
                prop_assert!(w.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-')));
            }
        }

        /// Well-formed values, with every character of the alphabet, round-trip; one byte
        /// changed to anything outside lowercase hex makes them ignored.
        #[test]
        fn well_formed_values_round_trip_and_one_bad_byte_refuses(
            trace in "[0-9a-f]{32}", parent in "[0-9a-f]{16}", flags in "[0-9a-f]{2}",
            at in 0usize..55, bad in any::<u8>(),
        ) {
            let v = format!("00-{trace}-{parent}-{flags}");
            let parsed = TraceParent::parse(v.as_bytes());
            let zero = trace.bytes().all(|b| b == b'0') || parent.bytes().all(|b| b == b'0');
            prop_assert_eq!(parsed.is_some(), !zero);
            if let Some(tp) = parsed {
                let sampled = u8::from_str_radix(&flags, 16).unwrap() & 1 == 1;
                prop_assert_eq!(tp.sampled, sampled);
                let written = tp.to_header();
                prop_assert_eq!(&written.as_bytes()[..53], &v.as_bytes()[..53]);
            }
            let mut edited = v.clone().into_bytes();
            let is_dash = matches!(at, 2 | 35 | 52);
            let allowed = if at < 2 { b'0' == bad } else if is_dash { bad == b'-' } else { bad.is_ascii_digit() || (b'a'..=b'f').contains(&bad) };
            edited[at] = bad;
            if !allowed {
                prop_assert_eq!(TraceParent::parse(&edited), None);
            }
        }
    }
}
