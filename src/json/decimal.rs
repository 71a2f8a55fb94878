//! Exact decimal values, for comparing numbers the way their text says rather than the way a
//! 64-bit float rounds them: `12.0000000000000001` is more than `12`, however long the digits.
//!
//! Two spellings are read. [`Decimal::json`] takes JSON's number grammar (RFC 8259, exponent
//! included): every JSON parser agrees on what such a token means. [`Decimal::plain`] takes
//! only `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, the one spelling of a number inside a string that
//! `parseInt`, `strtol` with base 0, Go's `ParseFloat`, Java's `BigDecimal` and the rest all
//! read as the same value; `"99e-1"`, `"012"`, `"+12"` or `" 12"` each mean different numbers
//! to some of them, so they are not numbers here.

use std::cmp::Ordering;

/// A finite decimal `(-1)^neg × 0.DIGITS × 10^point`, normalised so that equal values have
/// equal representations: no leading or trailing zero digits, and zero is `digits` empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decimal {
    neg: bool,
    /// ASCII digits.
    digits: Vec<u8>,
    point: i64,
}

impl Decimal {
    /// A JSON number token, exactly; `None` for anything else (or an exponent beyond `i64`).
    pub fn json(text: &str) -> Option<Decimal> {
        parse(text.as_bytes(), true)
    }

    /// A plain decimal: no exponent, no leading zeros, no `+`, no whitespace.
    pub fn plain(text: &str) -> Option<Decimal> {
        parse(text.as_bytes(), false)
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    fn sign(&self) -> i8 {
        match (self.is_zero(), self.neg) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        let (a, b) = (self.sign(), other.sign());
        if a != b || a == 0 {
            return a.cmp(&b);
        }
        // Same sign, both non-zero: the first digit is never 0, so the larger `point` is the
        // larger magnitude, and with equal points the digit strings compare as fractions
        // (a shorter string reads as if padded with zeros).
        let magnitude = self
            .point
            .cmp(&other.point)
            .then_with(|| self.digits.cmp(&other.digits));
        if a < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn parse(s: &[u8], exponent_allowed: bool) -> Option<Decimal> {
    let mut i = 0;
    let neg = s.first() == Some(&b'-');
    if neg {
        i += 1;
    }
    let int_start = i;
    while i < s.len() && s[i].is_ascii_digit() {
        i += 1;
    }
    let int = &s[int_start..i];
    if int.is_empty() || (int.len() > 1 && int[0] == b'0') {
        return None;
    }
    let mut frac: &[u8] = &[];
    if s.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < s.len() && s[i].is_ascii_digit() {
            i += 1;
        }
        frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
    }
    let mut exp: i64 = 0;
    if exponent_allowed && matches!(s.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_neg = match s.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            exp = exp.checked_mul(10)?.checked_add(i64::from(s[i] - b'0'))?;
            i += 1;
        }
        if i == start {
            return None;
        }
        if exp_neg {
            exp = -exp;
        }
    }
    if i != s.len() {
        return None;
    }
    let mut point = i64::try_from(int.len()).ok()?.checked_add(exp)?;
    let mut digits: Vec<u8> = int.iter().chain(frac).copied().collect();
    let leading = digits.iter().take_while(|d| **d == b'0').count();
    digits.drain(..leading);
    point = point.checked_sub(i64::try_from(leading).ok()?)?;
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.is_empty() {
        // -0 is 0: one representation per value.
        return Some(Decimal {
            neg: false,
            digits,
            point: 0,
        });
    }
    Some(Decimal { neg, digits, point })
}

/// An independent exact reference (big integers) and a generator of JSON number tokens, for
/// the property tests here and in the modules that compare numbers.
#[cfg(test)]
pub(crate) mod testing {
    use num_bigint::BigInt;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    /// The exact value `mantissa × 10^scale` of a JSON number token, for the reference.
    fn reference(text: &str) -> (BigInt, i64) {
        let (m, e) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], text[at + 1..].parse::<i64>().unwrap()),
            None => (text, 0),
        };
        let (int, frac) = m.split_once('.').unwrap_or((m, ""));
        let n: BigInt = format!("{int}{frac}").parse().unwrap();
        (n, e - frac.len() as i64)
    }

    pub fn reference_cmp(a: &str, b: &str) -> Ordering {
        let ((ma, ea), (mb, eb)) = (reference(a), reference(b));
        let scale = ea.min(eb);
        let ten = BigInt::from(10);
        let a = ma * ten.pow((ea - scale) as u32);
        let b = mb * ten.pow((eb - scale) as u32);
        a.cmp(&b)
    }

    /// JSON number tokens with long digit strings and exponents, built to collide often
    /// (shared prefixes, zeros that only move the point).
    pub fn number() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            prop_oneof![Just("0".to_string()), "[1-9][0-9]{0,25}", "10{0,20}"],
            proptest::option::of(prop_oneof!["[0-9]{1,25}", "0{1,5}", "[0-9]{0,3}0{1,4}"]),
            proptest::option::of((
                prop_oneof![Just("e"), Just("E")],
                prop_oneof![Just(""), Just("+"), Just("-")],
                0u32..40,
            )),
        )
            .prop_map(|(neg, int, frac, exp)| {
                let mut s = String::new();
                if neg {
                    s.push('-');
                }
                s.push_str(&int);
                if let Some(f) = frac {
                    s.push('.');
                    s.push_str(&f);
                }
                if let Some((e, sign, n)) = exp {
                    s.push_str(&format!("{e}{sign}{n}"));
                }
                s
            })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        Decimal::json(s).unwrap_or_else(|| panic!("{s} is a JSON number"))
    }

    #[test]
    fn spellings() {
        for ok in [
            "0", "-0", "12", "12.0", "-12.5", "0.001", "1e1", "1E+1", "12e-1", "0e5",
        ] {
            assert!(Decimal::json(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "-", "012", "+1", " 1", "1 ", "1.", ".5", "1e", "1e+", "0x10", "NaN", "1_0", "--1",
        ] {
            assert!(Decimal::json(bad).is_none(), "{bad:?}");
        }
        for ok in [
            "0",
            "-0",
            "12",
            "12.0",
            "-12.5",
            "0.001",
            "123456789012345678901234567890.5",
        ] {
            assert!(Decimal::plain(ok).is_some(), "{ok}");
        }
        for bad in [
            "99e-1", "1E1", "012", "+12", " 12", "12 ", "12.", ".5", "-", "1e1", "00",
        ] {
            assert!(Decimal::plain(bad).is_none(), "{bad:?}");
        }
        assert!(Decimal::json("1e99999999999999999999").is_none());
    }

    #[test]
    fn exact_order() {
        assert!(d("12.0000000000000001") > d("12"));
        assert!(d("11.9999999999999999") < d("12"));
        assert_eq!(d("12"), d("12.000"));
        assert_eq!(d("1.2e1"), d("12"));
        assert_eq!(d("120e-1"), d("12"));
        assert_eq!(d("-0"), d("0.0e7"));
        assert!(d("-12.5") < d("-12.4"));
        assert!(d("-1") < d("0"));
        assert!(d("0.1") > d("0.09999"));
        assert!(d("9007199254740993") > d("9007199254740992"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn order_is_exact(a in number(), b in number()) {
            prop_assert_eq!(d(&a).cmp(&d(&b)), reference_cmp(&a, &b), "{} vs {}", a, b);
        }

        #[test]
        fn plain_is_json_without_an_exponent(a in number()) {
            let plain = Decimal::plain(&a);
            if a.contains(['e', 'E']) {
                prop_assert!(plain.is_none());
            } else {
                prop_assert_eq!(plain, Some(d(&a)));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "[-+0-9.eE ]{0,12}") {
            let _ = Decimal::json(&s);
            let _ = Decimal::plain(&s);
        }
    }
}
