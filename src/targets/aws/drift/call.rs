//! The precondition's read call as AWS expects it on the wire, for each protocol: json (an
//! `X-Amz-Target` POST), query and ec2 (a form POST with `Action` and `Version`), rest-json and
//! rest-xml (the operation's route: URI labels, query string, headers, for rest-json a body).
//!
//! `params` are named as the certificate's constraints name a request's parameters: flat wire
//! names for query and ec2 (`InstanceId.1`), member names for the rest of the protocols.

use super::super::model::{self, Protocol, Route, Segment, Service};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

/// RFC 3986 unreserved characters stay; everything else is encoded, as SigV4 expects.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const GREEDY: &AsciiSet = &COMPONENT.remove(b'/');

#[derive(Debug)]
pub struct ReadCall {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn scalar(name: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!(
            "precondition parameter {name} must be a string, number or boolean here"
        )),
    }
}

pub fn build(
    service: &Service,
    operation: &str,
    route: &Route,
    params: &Map<String, Value>,
) -> Result<ReadCall, String> {
    match service.protocol {
        Protocol::Json => {
            if let Some(k) = params.keys().find(|k| !route.members.contains(k)) {
                return Err(format!("{operation} takes no parameter {k}"));
            }
            Ok(ReadCall {
                method: http::Method::POST,
                path_and_query: "/".into(),
                headers: vec![
                    (
                        "x-amz-target".into(),
                        format!(
                            "{}.{operation}",
                            service.target_prefix.as_deref().unwrap_or_default()
                        ),
                    ),
                    (
                        "content-type".into(),
                        format!(
                            "application/x-amz-json-{}",
                            service.json_version.as_deref().unwrap_or("1.1")
                        ),
                    ),
                ],
                body: Value::Object(params.clone()).to_string().into_bytes(),
            })
        }
        Protocol::Query | Protocol::Ec2 => {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", operation);
            form.append_pair("Version", &service.api_version);
            for (k, v) in params {
                let top = k.split('.').next().unwrap_or_default();
                if !route.members.iter().any(|m| m == top) {
                    return Err(format!("{operation} takes no parameter {k}"));
                }
                form.append_pair(k, &scalar(k, v)?);
            }
            Ok(ReadCall {
                method: http::Method::POST,
                path_and_query: "/".into(),
                headers: vec![(
                    "content-type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                )],
                body: form.finish().into_bytes(),
            })
        }
        Protocol::RestJson | Protocol::RestXml => rest(service, operation, route, params),
    }
}

fn rest(
    service: &Service,
    operation: &str,
    route: &Route,
    params: &Map<String, Value>,
) -> Result<ReadCall, String> {
    let (segments, literals) = model::parse_template(&route.uri);
    let label = |name: &str| -> Result<String, String> {
        let member = route
            .labels
            .get(name)
            .ok_or_else(|| format!("{operation}'s route names label {name} it does not bind"))?;
        let v = params
            .get(member)
            .ok_or_else(|| format!("{operation} needs {member}"))?;
        let s = scalar(member, v)?;
        if s.is_empty() {
            return Err(format!("{member} is empty"));
        }
        Ok(s)
    };
    let mut path = String::new();
    for seg in &segments {
        path.push('/');
        match seg {
            Segment::Literal(l) => path.push_str(l),
            Segment::Label(n) => {
                path.push_str(&utf8_percent_encode(&label(n)?, COMPONENT).to_string())
            }
            Segment::Greedy(n) => {
                path.push_str(&utf8_percent_encode(&label(n)?, GREEDY).to_string())
            }
        }
    }
    let template_path = route.uri.split('?').next().unwrap_or_default();
    if path.is_empty() || (template_path.ends_with('/') && !path.ends_with('/')) {
        path.push('/');
    }
    let mut query: Vec<String> = literals
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.to_string(),
        })
        .collect();
    let mut headers = Vec::new();
    let mut body = Map::new();
    for (k, v) in params {
        if route.labels.values().any(|m| m == k) {
            continue;
        }
        if let Some((wire, _)) = route.query.iter().find(|(_, m)| *m == k) {
            query.push(format!(
                "{}={}",
                utf8_percent_encode(wire, COMPONENT),
                utf8_percent_encode(&scalar(k, v)?, COMPONENT)
            ));
        } else if let Some((name, _)) = route.headers.iter().find(|(_, m)| *m == k) {
            headers.push((name.clone(), scalar(k, v)?));
        } else if route.body_members.contains(k) && service.protocol == Protocol::RestJson {
            body.insert(k.clone(), v.clone());
        } else {
            return Err(format!(
                "{operation} takes no parameter {k} a precondition can send"
            ));
        }
    }
    let path_and_query = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let body = if body.is_empty() {
        Vec::new()
    } else {
        headers.push(("content-type".into(), "application/json".into()));
        Value::Object(body).to_string().into_bytes()
    };
    Ok(ReadCall {
        method: route
            .method
            .parse()
            .map_err(|_| format!("{operation} has method {:?}", route.method))?,
        path_and_query,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(svc: &str, op: &str, params: Value) -> Result<ReadCall, String> {
        let s = model::service(svc).unwrap();
        build(s, op, &s.operations[op], params.as_object().unwrap())
    }

    #[test]
    fn each_protocol_builds_its_own_wire_form() {
        let c = call("ec2", "DescribeInstances", json!({"InstanceId.1": "i-1"})).unwrap();
        assert_eq!(
            String::from_utf8(c.body).unwrap(),
            "Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-1"
        );
        let c = call(
            "autoscaling",
            "DescribeAutoScalingGroups",
            json!({"AutoScalingGroupNames.member.1": "web"}),
        )
        .unwrap();
        assert!(String::from_utf8(c.body)
            .unwrap()
            .ends_with("AutoScalingGroupNames.member.1=web"));
        let c = call("s3", "HeadObject", json!({"Bucket": "b", "Key": "a b/c+d"})).unwrap();
        assert_eq!(
            (c.method.as_str(), c.path_and_query.as_str()),
            ("HEAD", "/b/a%20b/c%2Bd")
        );
        let c = call(
            "s3",
            "HeadObject",
            json!({"Bucket": "b", "Key": "k", "VersionId": "v1", "IfMatch": "\"e\""}),
        )
        .unwrap();
        assert_eq!(c.path_and_query, "/b/k?versionId=v1");
        assert_eq!(
            c.headers,
            vec![("if-match".to_string(), "\"e\"".to_string())]
        );
        let c = call(
            "lambda",
            "GetFunctionConfiguration",
            json!({"FunctionName": "f"}),
        )
        .unwrap();
        assert_eq!(
            (c.method.as_str(), c.path_and_query.as_str()),
            ("GET", "/2015-03-31/functions/f/configuration")
        );
        let c = call(
            "dynamodb",
            "GetItem",
            json!({"TableName": "t", "Key": {"id": {"S": "1"}}}),
        )
        .unwrap();
        assert_eq!(
            c.headers[0],
            (
                "x-amz-target".to_string(),
                "DynamoDB_20120810.GetItem".to_string()
            )
        );
    }

    #[test]
    fn parameters_the_operation_does_not_take_are_refused() {
        assert!(call("ec2", "DescribeInstances", json!({"Nope.1": "x"})).is_err());
        assert!(call("ec2", "DescribeInstances", json!({"InstanceId.1": ["x"]})).is_err());
        assert!(call("s3", "HeadObject", json!({"Bucket": "b"}))
            .unwrap_err()
            .contains("Key"));
        assert!(call(
            "s3",
            "HeadObject",
            json!({"Bucket": "b", "Key": "k", "Body": "x"})
        )
        .is_err());
        assert!(call(
            "dynamodb",
            "GetItem",
            json!({"TableName": "t", "Whatever": 1})
        )
        .is_err());
    }
}
