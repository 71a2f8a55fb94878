use super::*;
use serde_json::json;

#[test]
fn refuses_duplicate_keys_at_any_depth() {
    assert!(parse_strict(br#"{"a":1,"a":2}"#).is_err());
    assert!(parse_strict(br#"{"x":{"b":1,"b":1}}"#).is_err());
    assert!(parse_strict(br#"[{"k":1},{"k":2,"k":3}]"#).is_err());
    // Keys that differ only by escape spelling are the same key once decoded.
    assert!(parse_strict(br#"{"a":1,"\u0061":2}"#).is_err());
}

/// `check_strict` must refuse exactly what `parse_strict` refuses: certificates are checked
/// with the first and request bodies parsed with the second.
#[test]
fn check_strict_agrees_with_parse_strict() {
    // `count` distinct keys, then a repeat of key `dup`
    let object = |count: usize, dup: Option<usize>| {
        let mut keys: Vec<String> = (0..count).map(|i| format!("\"k{i}\":{i}")).collect();
        if let Some(i) = dup {
            keys.push(format!("\"k{i}\":0"));
        }
        format!("{{\"o\":{{{}}}}}", keys.join(",")).into_bytes()
    };
    let cases: Vec<(Vec<u8>, bool)> = vec![
        (br#"{"a":1,"a":2}"#.to_vec(), false),
        (br#"{"x":{"b":1,"b":1}}"#.to_vec(), false),
        (br#"[{"k":1},{"k":2,"k":3}]"#.to_vec(), false),
        (br#"{"a":1,"\u0061":2}"#.to_vec(), false),
        (br#"{"\u0061":1,"a":2}"#.to_vec(), false),
        (br#"{"a":1} {"a":2}"#.to_vec(), false),
        (br#"{"a":1"#.to_vec(), false),
        (b"".to_vec(), false),
        (b"1e999".to_vec(), false),
        // duplicates while the keys are compared one by one, at the switch to a hash set,
        // and after it
        (object(5, Some(3)), false),
        (object(LINEAR_KEYS - 1, Some(0)), false),
        (object(LINEAR_KEYS, Some(0)), false),
        (object(LINEAR_KEYS, Some(LINEAR_KEYS - 1)), false),
        (object(LINEAR_KEYS + 1, Some(0)), false),
        (object(40, Some(3)), false),
        (object(40, Some(30)), false),
        (object(LINEAR_KEYS, None), true),
        (object(40, None), true),
        (
            br#"{"a":[1,2,{"b":null,"c":"\u00e9"}],"b":{"a":1},"e":-1.5e3}"#.to_vec(),
            true,
        ),
        (br#"{"a\nb":1,"a\u000ab2":2}"#.to_vec(), true),
    ];
    for (bytes, ok) in cases {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(parse_strict(&bytes).is_ok(), ok, "parse_strict {text}");
        assert_eq!(check_strict(&bytes).is_ok(), ok, "check_strict {text}");
    }
}

#[test]
fn numbers_are_kept_exactly_or_refused() {
    for exact in [
        "0",
        "-0",
        "0.1",
        "1.50",
        "12.0",
        "1E1",
        "1.2e+1",
        "-1.5e3",
        "9007199254740993",
        "18446744073709551615",
        "-9223372036854775808",
        "5e-324",
        "1.7976931348623157e308",
    ] {
        let v = parse_strict(exact.as_bytes()).unwrap_or_else(|e| panic!("{exact}: {e}"));
        assert!(check_strict(exact.as_bytes()).is_ok(), "{exact}");
        assert_eq!(
            crate::json::decimal::Decimal::json(&v.to_string()),
            crate::json::decimal::Decimal::json(exact),
            "{exact} reads as {v}"
        );
    }
    for inexact in [
        "12.0000000000000001",
        "11.9999999999999999",
        "0.10000000000000000001",
        "18446744073709551616",
        "-9223372036854775809",
        "1e-400",
        "1e999",
    ] {
        assert!(parse_strict(inexact.as_bytes()).is_err(), "{inexact}");
        assert!(check_strict(inexact.as_bytes()).is_err(), "{inexact}");
        let nested = format!(r#"{{"a":[1,{{"b":{inexact}}}]}}"#);
        assert!(parse_strict(nested.as_bytes()).is_err(), "{nested}");
        assert!(check_strict(nested.as_bytes()).is_err(), "{nested}");
    }
    // Digits inside strings and keys, escaped quotes included, are not number tokens.
    let v =
        parse_strict(br#"{"1.0000000000000000001\"2":"3.00000000000000000001\\","n":[-2.5,7]}"#)
            .unwrap();
    assert_eq!(v["n"], json!([-2.5, 7]));
}

/// A JSON object with these keys and number tokens, in order.
fn object_text(members: &[(String, String)]) -> String {
    let parts: Vec<String> = members
        .iter()
        .map(|(k, n)| format!("{}:[{n}]", serde_json::to_string(k).unwrap()))
        .collect();
    format!("{{{}}}", parts.join(","))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1500, ..Default::default() })]

    /// Both readers accept a document exactly when every number token in it is kept
    /// exactly (judged with big integers and the standard library's float parser), and
    /// the values they keep are the tokens' values, whatever the strings around them hold.
    #[test]
    fn number_tokens_are_read_in_order_and_exactly(
        members in proptest::collection::vec(
            ("[a-z0-9\\\\\"\\-.eE\\u{e9} ]{0,6}", crate::json::decimal::testing::number()),
            0..6,
        )
    ) {
        use crate::json::decimal::testing::reference_cmp;
        let members: Vec<(String, String)> = {
            // serde_json keeps the last of duplicate keys only in the reference; strict
            // readers refuse them, which is not what this property is about.
            let mut seen = HashSet::new();
            members.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect()
        };
        let text = object_text(&members);
        let kept_exactly = |n: &str| {
            let integer = !n.contains(['.', 'e', 'E']);
            (integer && (n.parse::<i64>().is_ok() || n.parse::<u64>().is_ok()))
                || n.parse::<f64>().ok().filter(|f| f.is_finite()).is_some_and(|f| {
                    let shortest = serde_json::Number::from_f64(f).unwrap().to_string();
                    reference_cmp(n, &shortest) == std::cmp::Ordering::Equal
                })
        };
        let expect = members.iter().all(|(_, n)| kept_exactly(n));
        proptest::prop_assert_eq!(check_strict(text.as_bytes()).is_ok(), expect, "{}", text);
        match parse_strict(text.as_bytes()) {
            Ok(v) => {
                proptest::prop_assert!(expect, "{}", text);
                for (k, n) in &members {
                    let kept = v[k][0].to_string();
                    proptest::prop_assert_eq!(reference_cmp(&kept, n), std::cmp::Ordering::Equal, "{} kept as {}", n, kept);
                }
            }
            Err(_) => proptest::prop_assert!(!expect, "{}", text),
        }
    }

    /// A pointer spelled from any path selects that path's value, and `*` only where an
    /// array is.
    #[test]
    fn pointers_round_trip(keys in proptest::collection::vec("[a-z~/*0-9]{0,3}", 1..4)) {
        let mut value = json!(1);
        for k in keys.iter().rev() {
            let mut m = Map::new();
            m.insert(k.clone(), value);
            value = Value::Object(m);
        }
        let path: Vec<Step> = keys.iter().map(|k| Step::Key(k)).collect();
        let pointer = format_path(&path);
        let (found, missing) = select(&value, &pointer);
        if keys.iter().any(|k| k == "*") {
            proptest::prop_assert!(found.is_empty());
            proptest::prop_assert_eq!(missing.len(), 1);
        } else {
            proptest::prop_assert_eq!(found, vec![(pointer.clone(), json!(1))]);
            proptest::prop_assert!(missing.is_empty());
            proptest::prop_assert_eq!(first_uncovered(&value, &[Pattern::parse(&pointer).unwrap()]), None);
        }
    }
}

#[test]
fn wildcards_report_elements_without_the_rest() {
    let v = json!({"c": [{"n": 1}, {"m": 2}, 3], "o": {"*": 1}, "s": "x"});
    let (found, missing) = select(&v, "/c/*/n");
    assert_eq!(found, vec![("/c/0/n".into(), json!(1))]);
    assert_eq!(
        missing,
        vec![("/c/1".into(), "n".into()), ("/c/2".into(), "n".into())]
    );
    assert_eq!(select(&v, "/s/*").1, vec![("/s".into(), "*".into())]);
    assert_eq!(select(&v, "/c/3").1, vec![("/c".into(), "3".into())]);
    assert_eq!(select(&v, "/c/-").1, vec![("/c".into(), "-".into())]);
    // Coverage never reads * as the key "*".
    let p = |s: &str| Pattern::parse(s).unwrap();
    assert_eq!(
        first_uncovered(&json!({"o": {"*": 1}}), &[p("/o/*")]),
        Some("/o/*".into())
    );
}

#[test]
fn accepts_plain_json_and_refuses_trailing_data() {
    assert_eq!(
        parse_strict(br#"{"a":[1,2,{"b":null}]}"#).unwrap(),
        json!({"a":[1,2,{"b":null}]})
    );
    assert!(parse_strict(br#"{"a":1} {"a":2}"#).is_err());
    assert!(parse_strict(b"").is_err());
}

/// (path, value) for each selected value.
type Found = Vec<(String, Value)>;
/// (path, segment) for each place where a segment did not apply.
type Misses = Vec<(String, String)>;

/// What a pointer selects, and the places where it found nothing.
fn select(v: &Value, pointer: &str) -> (Found, Misses) {
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    Pattern::parse(pointer)
        .unwrap()
        .try_for_each::<()>(v, &mut |path, selected| {
            match selected {
                Selected::Value(value) => found.push((format_path(path), value.clone())),
                Selected::Missing { segment, .. } => {
                    missing.push((format_path(path), segment.to_string()))
                }
            }
            Ok(())
        })
        .unwrap();
    (found, missing)
}

fn matches(v: &Value, pointer: &str) -> Vec<(String, Value)> {
    select(v, pointer).0
}

#[test]
fn pointer_with_wildcards() {
    let v = json!({"a":[{"n":1},{"n":2}],"m~x":{"s/t":3},"o":{"*":4}});
    assert_eq!(
        matches(&v, "/a/*/n"),
        vec![("/a/0/n".into(), json!(1)), ("/a/1/n".into(), json!(2))]
    );
    assert_eq!(
        matches(&v, "/m~0x/s~1t"),
        vec![("/m~0x/s~1t".into(), json!(3))]
    );
    assert!(matches(&v, "/a/01").is_empty());
    assert_eq!(matches(&v, "/a/1/n").len(), 1);
    assert_eq!(
        select(&v, "/o/*"),
        (vec![], vec![("/o".into(), "*".into())]),
        "* on an object is a miss, never the key \"*\""
    );
    assert!(Pattern::parse("a").is_err());
    assert!(Pattern::parse("/a~2").is_err());
}

#[test]
fn coverage_stops_at_selected_nodes() {
    let v = json!({"a":{"b/c":1,"d":[]},"e":[true, {"f": 1}]});
    let p = |s: &str| Pattern::parse(s).unwrap();
    assert_eq!(first_uncovered(&v, &[]), Some("/a/b~1c".into()));
    assert_eq!(first_uncovered(&v, &[p("/a"), p("/e/*")]), None);
    assert_eq!(
        first_uncovered(&v, &[p("/a/b~1c"), p("/e")]),
        Some("/a/d".into())
    );
    assert_eq!(
        first_uncovered(&v, &[p("/a"), p("/e/0")]),
        Some("/e/1/f".into())
    );
    assert_eq!(first_uncovered(&v, &[p("")]), None);
    assert_eq!(first_uncovered(&json!({}), &[]), Some("".into()));
    let mut all = leaves(&v);
    all.sort();
    assert_eq!(all, vec!["/a/b~1c", "/a/d", "/e/0", "/e/1/f"]);
}
