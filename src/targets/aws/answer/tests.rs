use super::*;
use proptest::prelude::*;
use serde_json::json;

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

const EC2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r-1</requestId>
  <reservationSet>
    <item>
      <reservationId>r-0</reservationId>
      <instancesSet>
        <item>
          <instanceId>i-1</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <tagSet><item><key>env</key><value>prod &amp; co</value></item></tagSet>
          <somethingAwsAddedLater><x>1</x></somethingAwsAddedLater>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
</DescribeInstancesResponse>"#;

#[test]
fn ec2_answers_read_as_botocore_names_them() {
    let v = answer(
        "ec2",
        Protocol::Ec2,
        "DescribeInstances",
        200,
        &headers(&[]),
        EC2.as_bytes(),
    )
    .unwrap();
    let i = &v["Reservations"][0]["Instances"][0];
    assert_eq!(i["InstanceId"], "i-1");
    assert_eq!(i["State"], json!({"Code": 16, "Name": "running"}));
    assert_eq!(i["Tags"], json!([{"Key": "env", "Value": "prod & co"}]));
}

#[test]
fn query_answers_unwrap_their_result_and_flattened_s3_lists_collect() {
    let asg = r#"<DescribeAutoScalingGroupsResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeAutoScalingGroupsResult><AutoScalingGroups><member><AutoScalingGroupName>web</AutoScalingGroupName><DesiredCapacity>3</DesiredCapacity><MinSize>0</MinSize></member></AutoScalingGroups></DescribeAutoScalingGroupsResult><ResponseMetadata><RequestId>x</RequestId></ResponseMetadata></DescribeAutoScalingGroupsResponse>"#;
    let v = answer(
        "autoscaling",
        Protocol::Query,
        "DescribeAutoScalingGroups",
        200,
        &headers(&[]),
        asg.as_bytes(),
    )
    .unwrap();
    assert_eq!(v["AutoScalingGroups"][0]["DesiredCapacity"], 3);
    let s3 = r#"<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><KeyCount>2</KeyCount><Contents><Key>a</Key><ETag>"1"</ETag></Contents><Contents><Key>b</Key><ETag>"2"</ETag></Contents></ListBucketResult>"#;
    let v = answer(
        "s3",
        Protocol::RestXml,
        "ListObjectsV2",
        200,
        &headers(&[]),
        s3.as_bytes(),
    )
    .unwrap();
    assert_eq!(v["Contents"][1]["ETag"], "\"2\"");
    assert_eq!(v["KeyCount"], 2);
    let head = answer(
        "s3",
        Protocol::RestXml,
        "HeadObject",
        200,
        &headers(&[
            ("etag", "\"abc\""),
            ("content-length", "3"),
            ("x-amz-meta-owner", "ops"),
        ]),
        b"",
    )
    .unwrap();
    assert_eq!(head["ETag"], "\"abc\"");
    assert_eq!(head["ContentLength"], 3);
    assert_eq!(head["Metadata"]["owner"], "ops");
    let twice = headers(&[("etag", "\"abc\""), ("etag", "\"def\"")]);
    assert!(
        answer("s3", Protocol::RestXml, "HeadObject", 200, &twice, b"")
            .unwrap_err()
            .contains("twice")
    );
}

#[test]
fn what_could_be_read_two_ways_is_refused() {
    let bad = [
        (
            r#"<!DOCTYPE x [<!ENTITY e "v">]><DescribeInstancesResponse/>"#,
            "DTD",
        ),
        (
            r#"<?pi x?><DescribeInstancesResponse/>"#,
            "processing instruction",
        ),
        (
            r#"<DescribeInstancesResponse><!-- c --></DescribeInstancesResponse>"#,
            "comment",
        ),
        (
            r#"<DescribeInstancesResponse><requestId><![CDATA[x]]></requestId></DescribeInstancesResponse>"#,
            "CDATA",
        ),
        (
            r#"<DescribeInstancesResponse><requestId>&e;</requestId></DescribeInstancesResponse>"#,
            "entity",
        ),
        (
            r#"<a:DescribeInstancesResponse xmlns:a="http://ec2.amazonaws.com/"/>"#,
            "namespaced",
        ),
        (
            r#"<DescribeInstancesResponse xmlns="http://evil.example/"/>"#,
            "not an AWS",
        ),
        (
            r#"<DescribeInstancesResponse><x xmlns="http://ec2.amazonaws.com/"/></DescribeInstancesResponse>"#,
            "below the root",
        ),
        (
            r#"<DescribeInstancesResponse><reservationSet/><reservationSet/></DescribeInstancesResponse>"#,
            "twice",
        ),
        (
            r#"<DescribeInstancesResponse><reservationSet><oops/></reservationSet></DescribeInstancesResponse>"#,
            "not <item>",
        ),
        (
            r#"<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceState><code>sixteen</code></instanceState></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#,
            "not a integer",
        ),
        (
            r#"<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId><instanceId>i-2</instanceId></item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#,
            "twice",
        ),
        (
            r#"<DescribeInstancesResponse><reservationSet>text<item/></reservationSet></DescribeInstancesResponse>"#,
            "text",
        ),
        (
            r#"<DescribeInstancesResponse></DescribeInstancesResponse><x/>"#,
            "more than one root",
        ),
        (r#"<Other/>"#, "not <DescribeInstancesResponse>"),
        (r#"<DescribeInstancesResponse>"#, "ends inside"),
    ];
    for (xml, why) in bad {
        let e = answer(
            "ec2",
            Protocol::Ec2,
            "DescribeInstances",
            200,
            &headers(&[]),
            xml.as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains(why), "{xml}: {e} (wanted {why})");
    }
    // Character references and the five predefined entities are plain text.
    let ok = r#"<DescribeInstancesResponse><requestId>&#x41;&lt;&quot;</requestId></DescribeInstancesResponse>"#;
    assert!(answer(
        "ec2",
        Protocol::Ec2,
        "DescribeInstances",
        200,
        &headers(&[]),
        ok.as_bytes()
    )
    .is_ok());
}

#[test]
fn every_generated_output_shape_resolves() {
    for svc in [
        "ec2",
        "s3",
        "autoscaling",
        "iam",
        "cloudformation",
        "lambda",
        "sns",
        "sts",
        "eks",
    ] {
        let out = outputs(svc).unwrap_or_else(|| panic!("{svc}"));
        for (name, shape) in &out.shapes {
            for m in shape.m.values() {
                assert!(out.shapes.contains_key(&m.s), "{svc} {name}.{}", m.s);
            }
            for s in [&shape.s, &shape.k, &shape.v].into_iter().flatten() {
                assert!(out.shapes.contains_key(s), "{svc} {name} -> {s}");
            }
        }
        for (op, o) in &out.ops {
            if let Some(s) = &o.shape {
                assert!(out.shapes.contains_key(s), "{svc} {op}");
            }
        }
    }
}

// --- the round trip: JSON -> XML (as AWS would write it) -> JSON is the identity

#[derive(Debug, Clone)]
enum Schema {
    Str,
    Int,
    Bool,
    List { flat: bool, item: Box<Schema> },
    Struct(Vec<Schema>),
}

fn schema() -> impl Strategy<Value = Schema> {
    let leaf = prop_oneof![Just(Schema::Str), Just(Schema::Int), Just(Schema::Bool)];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            (any::<bool>(), inner.clone()).prop_map(|(flat, i)| Schema::List {
                flat,
                item: Box::new(i)
            }),
            prop::collection::vec(inner, 1..4).prop_map(Schema::Struct),
        ]
    })
}

/// Registers `s` in `shapes` and returns its shape name.
fn register(s: &Schema, shapes: &mut BTreeMap<String, Shape>) -> String {
    let name = format!("S{}", shapes.len());
    shapes.insert(name.clone(), Shape::default());
    let shape = match s {
        Schema::Str => Shape {
            t: "string".into(),
            ..Shape::default()
        },
        Schema::Int => Shape {
            t: "integer".into(),
            ..Shape::default()
        },
        Schema::Bool => Shape {
            t: "boolean".into(),
            ..Shape::default()
        },
        Schema::List { flat, item } => Shape {
            t: "list".into(),
            s: Some(register(item, shapes)),
            n: Some("member".into()),
            flat: *flat,
            ..Shape::default()
        },
        Schema::Struct(members) => Shape {
            t: "structure".into(),
            m: members
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    (
                        format!("Member{i}"),
                        MemberRef {
                            n: format!("m{i}"),
                            s: register(m, shapes),
                            flat: false,
                            loc: None,
                            attr: false,
                        },
                    )
                })
                .collect(),
            ..Shape::default()
        },
    };
    shapes.insert(name.clone(), shape);
    name
}

fn value(s: &Schema) -> BoxedStrategy<Value> {
    match s {
        Schema::Str => "[a-zA-Z0-9 <>&'\"é]{0,8}".prop_map(Value::from).boxed(),
        Schema::Int => any::<i32>().prop_map(Value::from).boxed(),
        Schema::Bool => any::<bool>().prop_map(Value::from).boxed(),
        // A flattened list with no items is absent from the XML, so it has at least one.
        Schema::List { flat, item } => prop::collection::vec(value(item), usize::from(*flat)..3)
            .prop_map(Value::Array)
            .boxed(),
        Schema::Struct(members) => {
            let parts: Vec<BoxedStrategy<Option<Value>>> = members
                .iter()
                .map(|m| proptest::option::of(value(m)).boxed())
                .collect();
            parts
                .prop_map(|vals| {
                    Value::Object(
                        vals.into_iter()
                            .enumerate()
                            .filter_map(|(i, v)| v.map(|v| (format!("Member{i}"), v)))
                            .collect(),
                    )
                })
                .boxed()
        }
    }
}

fn to_xml(shapes: &BTreeMap<String, Shape>, shape: &str, v: &Value, name: &str, out: &mut String) {
    let s = &shapes[shape];
    match s.t.as_str() {
        "structure" => {
            out.push_str(&format!("<{name}>"));
            for (member, m) in &s.m {
                let Some(mv) = v.get(member) else { continue };
                let target = &shapes[&m.s];
                if target.t == "list" && target.flat {
                    for item in mv.as_array().unwrap() {
                        to_xml(shapes, target.s.as_deref().unwrap(), item, &m.n, out);
                    }
                } else {
                    to_xml(shapes, &m.s, mv, &m.n, out);
                }
            }
            out.push_str(&format!("</{name}>"));
        }
        "list" => {
            out.push_str(&format!("<{name}>"));
            for item in v.as_array().unwrap() {
                to_xml(
                    shapes,
                    s.s.as_deref().unwrap(),
                    item,
                    s.n.as_deref().unwrap(),
                    out,
                );
            }
            out.push_str(&format!("</{name}>"));
        }
        _ => {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!(
                "<{name}>{}</{name}>",
                quick_xml::escape::escape(text.as_str())
            ));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_xml(&bytes);
        let _ = answer("ec2", Protocol::Ec2, "DescribeInstances", 200, &http::HeaderMap::new(), &bytes);
        let _ = answer("s3", Protocol::RestXml, "ListObjectsV2", 200, &http::HeaderMap::new(), &bytes);
    }

    #[test]
    fn xml_shaped_text_never_panics(s in "(<[a-zA-Z:]{1,4}( xmlns=\"[a-z:/.]{0,12}\")?>|</[a-zA-Z]{1,4}>|&[a-z#0-9]{0,4};|[a-z ]{0,3}|<!|<\\?|\\]\\]>){0,24}") {
        let _ = parse_xml(s.as_bytes());
    }

    #[test]
    fn json_to_xml_to_json_is_the_identity((sch, v) in schema()
        .prop_map(|s| match s { Schema::Struct(_) => s, other => Schema::Struct(vec![other]) })
        .prop_flat_map(|s| { let v = value(&s); (Just(s), v) }))
    {
        let mut shapes = BTreeMap::new();
        let root = register(&sch, &mut shapes);
        let mut xml = String::new();
        to_xml(&shapes, &root, &v, "Root", &mut xml);
        let el = parse_xml(xml.as_bytes()).unwrap();
        let back = Converter { shapes: &shapes }.structure(&shapes[&root], &el).unwrap();
        prop_assert_eq!(back, v, "{}", xml);
    }
}
