//! The equalities a DynamoDB `ConditionExpression` requires of every write it admits: the
//! conjuncts `attr = :v` (or `:v = attr`) at its top level. Operator precedence in DynamoDB
//! is `NOT` over `AND` over `OR`, so an expression with no top-level `OR` is a conjunction
//! of its top-level terms, and each `attr = :v` term must hold for the write to run; any other
//! term only narrows it further. An expression with a top-level `OR` requires nothing for
//! sure, and is refused as a pin. Only top-level attributes (no `a.b`, no `a[0]`) pin.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Value(String),
    Ident(String),
    Op(String),
    Open,
    Close,
    Other(char),
}

fn tokens(expr: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = expr.char_indices().peekable();
    let word = |start: usize, it: &mut std::iter::Peekable<std::str::CharIndices>| {
        let mut end = start;
        while let Some(&(i, c)) = it.peek() {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                end = i + c.len_utf8();
                it.next();
            } else {
                break;
            }
        }
        &expr[start..end]
    };
    while let Some((i, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Tok::Open),
            ')' => out.push(Tok::Close),
            '#' | ':' => {
                let w = word(i + 1, &mut it);
                if w.is_empty() {
                    return Err(format!("{c} names nothing"));
                }
                out.push(if c == '#' {
                    Tok::Name(format!("#{w}"))
                } else {
                    Tok::Value(format!(":{w}"))
                });
            }
            '=' => out.push(Tok::Op("=".into())),
            '<' | '>' => {
                let mut op = c.to_string();
                if let Some(&(_, n)) = it.peek() {
                    if n == '=' || (c == '<' && n == '>') {
                        op.push(n);
                        it.next();
                    }
                }
                out.push(Tok::Op(op));
            }
            ',' | '.' | '[' | ']' => out.push(Tok::Other(c)),
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let rest = word(i + c.len_utf8(), &mut it);
                out.push(Tok::Ident(format!("{c}{rest}")));
            }
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(out)
}

fn keyword(t: &Tok, k: &str) -> bool {
    matches!(t, Tok::Ident(w) if w.eq_ignore_ascii_case(k))
}

/// `attr -> required value` for the top-level `attr = :v` conjuncts of `expr`.
pub fn equalities(
    expr: &str,
    names: Option<&Map<String, Value>>,
    values: Option<&Map<String, Value>>,
) -> Result<BTreeMap<String, Value>, String> {
    let toks = tokens(expr)?;
    let mut terms: Vec<&[Tok]> = Vec::new();
    let (mut depth, mut start, mut between) = (0usize, 0usize, false);
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.checked_sub(1).ok_or("unbalanced parentheses")?;
            }
            _ if depth > 0 => {}
            t if keyword(t, "OR") => {
                return Err("it has a top-level OR, so it requires nothing for sure".into())
            }
            t if keyword(t, "BETWEEN") => between = true,
            t if keyword(t, "AND") && between => between = false,
            t if keyword(t, "AND") => {
                terms.push(&toks[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parentheses".into());
    }
    terms.push(&toks[start..]);
    let mut out = BTreeMap::new();
    for mut term in terms {
        if term.is_empty() {
            return Err("an empty term around AND".into());
        }
        // `(a = :v)`: one pair of parentheses around the whole term.
        while term.len() >= 2
            && term[0] == Tok::Open
            && term[term.len() - 1] == Tok::Close
            && wraps(term)
        {
            term = &term[1..term.len() - 1];
        }
        let (attr, value) = match term {
            [a, Tok::Op(op), Tok::Value(v)] | [Tok::Value(v), Tok::Op(op), a] if op == "=" => {
                (a, v)
            }
            _ => continue,
        };
        let attr = match attr {
            Tok::Name(n) => names
                .and_then(|m| m.get(n))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{n} is not in ExpressionAttributeNames"))?
                .to_string(),
            Tok::Ident(w) if !is_reserved(w) => w.clone(),
            _ => continue,
        };
        let value = values
            .and_then(|m| m.get(value))
            .ok_or_else(|| format!("{value} is not in ExpressionAttributeValues"))?;
        if let Some(prev) = out.insert(attr.clone(), value.clone()) {
            if &prev != value {
                return Err(format!("it requires {attr} to be two values"));
            }
        }
    }
    Ok(out)
}

/// Whether the first `(` of `term` closes at its last token.
fn wraps(term: &[Tok]) -> bool {
    let mut depth = 0usize;
    for (i, t) in term.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return i == term.len() - 1;
                }
            }
            _ => {}
        }
    }
    false
}

/// Words that are functions or keywords, never attribute names in a bare spelling.
fn is_reserved(w: &str) -> bool {
    ["AND", "OR", "NOT", "BETWEEN", "IN", "SIZE"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn eq(expr: &str) -> Result<BTreeMap<String, Value>, String> {
        let names = json!({"#v": "version", "#s": "status"});
        let values =
            json!({":v": {"N": "3"}, ":s": {"S": "ok"}, ":a": {"N": "1"}, ":b": {"N": "9"}});
        equalities(expr, names.as_object(), values.as_object())
    }

    #[test]
    fn top_level_equalities_are_what_the_condition_requires() {
        assert_eq!(eq("#v = :v").unwrap()["version"], json!({"N": "3"}));
        let both = eq("(#v = :v) AND :s = #s AND attribute_exists(id)").unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both["status"], json!({"S": "ok"}));
        let between = eq("n BETWEEN :a AND :b AND version = :v").unwrap();
        assert_eq!(between.keys().collect::<Vec<_>>(), vec!["version"]);
        // Nothing for sure: an OR at the top, or the equality only inside a NOT or a group.
        assert!(eq("#v = :v OR attribute_not_exists(id)").is_err());
        assert!(eq("NOT #v = :v").unwrap().is_empty());
        assert!(eq("(#v = :v OR #s = :s)").unwrap().is_empty());
        assert!(eq("#v <> :v").unwrap().is_empty());
        assert!(eq("a.b = :v").unwrap().is_empty());
        assert!(eq("#x = :v").is_err());
        assert!(eq("#v = :zz").is_err());
        assert!(eq("#v = :v AND #v = :a").is_err());
        assert!(eq("(#v = :v").is_err());
        assert!(eq("#v = :v AND").is_err());
        assert!(eq("#v = :v; DROP").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_expressions_never_panic(s in "[#:a-zA-Z0-9 ()=<>,.\\[\\]]{0,40}") {
            let _ = eq(&s);
        }
    }
}
