#!/usr/bin/env python3
"""moto fixture for tests/aws_e2e.rs.

`setup`: against a fresh moto server (auth still off), creates the IAM principals the broker
and the test use, the resources the tests change, then turns moto's auth checks on
(`POST /moto-api/reset-auth` with body 0), after which moto verifies every SigV4 signature
and IAM permission. Prints one JSON object: credentials and resource ids.

`state`: reads moto's state with the test's admin credentials, prints JSON.
"""
import argparse
import io
import json
import sys
import urllib.request
import zipfile

import boto3
from botocore.config import Config

REGION = "us-east-1"
ACCOUNT = "123456789012"
ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def client(endpoint, service, creds=None):
    kw = {}
    if creds:
        kw = {"aws_access_key_id": creds[0], "aws_secret_access_key": creds[1]}
    else:
        kw = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}), **kw)


def user_with_key(iam, name, policy):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return [k["AccessKeyId"], k["SecretAccessKey"]]


def setup(endpoint):
    iam = client(endpoint, "iam")
    out = {"region": REGION}
    out["admin"] = user_with_key(iam, "test-admin", ALLOW_ALL)
    # The broker's base user may only assume the execution and read roles.
    only_assume = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"], "Resource": "*"}]})
    out["broker"] = user_with_key(iam, "seb-broker", only_assume)
    # The broker as it runs on ECS, EKS or EC2: its base credentials are a role's session, handed
    # out by a container credentials endpoint or IMDS (the tests serve these from fakes).
    broker_role = iam.create_role(RoleName="seb-broker-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]
    iam.put_role_policy(RoleName="seb-broker-role", PolicyName="only-assume", PolicyDocument=only_assume)
    c = client(endpoint, "sts", out["admin"]).assume_role(RoleArn=broker_role["Arn"], RoleSessionName="seb-broker",
                                                          DurationSeconds=3600)["Credentials"]
    out["broker_session"] = {"AccessKeyId": c["AccessKeyId"], "SecretAccessKey": c["SecretAccessKey"],
                             "Token": c["SessionToken"], "Expiration": c["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ")}
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": [
            f"arn:aws:iam::{ACCOUNT}:user/seb-broker", broker_role["Arn"],
            # moto matches the caller's session ARN literally, where AWS also matches the role.
            f"arn:aws:sts::{ACCOUNT}:assumed-role/seb-broker-role/seb-broker"]},
        "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]}]})
    for role, policy in [("seb-exec", ALLOW_ALL), ("seb-read", json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["ec2:Describe*", "ecs:Describe*", "ecs:List*", "s3:List*", "s3:Get*",
                                           "dynamodb:Describe*", "dynamodb:Get*", "sqs:Get*", "sqs:List*",
                                           "autoscaling:Describe*", "lambda:Get*", "lambda:List*"], "Resource": "*"}]}))]:
        r = iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)
        iam.put_role_policy(RoleName=role, PolicyName=f"{role}-policy", PolicyDocument=policy)
        out[role.replace("-", "_") + "_arn"] = r["Role"]["Arn"]
    # A static-credentials principal for identity = "static" runs.
    out["static"] = user_with_key(iam, "seb-static", ALLOW_ALL)

    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket="prod-artifacts")
    s3.put_object(Bucket="prod-artifacts", Key="keep.txt", Body=b"keep")
    s3.put_object(Bucket="prod-artifacts", Key="old.txt", Body=b"old")

    ec2 = client(endpoint, "ec2")
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2)["Instances"]]
    out["instances"] = ids

    asg = client(endpoint, "autoscaling")
    asg.create_launch_configuration(LaunchConfigurationName="web-lc", ImageId=ami, InstanceType="t2.micro")
    asg.create_auto_scaling_group(AutoScalingGroupName="web", LaunchConfigurationName="web-lc",
                                  MinSize=0, MaxSize=10, DesiredCapacity=1, AvailabilityZones=["us-east-1a"])
    asg.create_auto_scaling_group(AutoScalingGroupName="batch", LaunchConfigurationName="web-lc",
                                  MinSize=0, MaxSize=10, DesiredCapacity=1, AvailabilityZones=["us-east-1a"])

    ecs = client(endpoint, "ecs")
    ecs.create_cluster(clusterName="prod")
    ecs.register_task_definition(family="api", containerDefinitions=[{"name": "api", "image": "nginx", "memory": 128}])
    for svc in ("api", "worker"):
        ecs.create_service(cluster="prod", serviceName=svc, taskDefinition="api", desiredCount=2)

    ddb = client(endpoint, "dynamodb")
    for t in ("orders", "audit"):
        ddb.create_table(TableName=t, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                         AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                         BillingMode="PAY_PER_REQUEST")

    sqs = client(endpoint, "sqs")
    out["queues"] = {q: sqs.create_queue(QueueName=q)["QueueUrl"] for q in ("jobs", "other")}

    lam = client(endpoint, "lambda")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("index.py", "def handler(e, c):\n    return e\n")
    for fn in ("resize", "billing"):
        lam.create_function(FunctionName=fn, Runtime="python3.11", Role=out["seb_exec_arn"],
                            Handler="index.handler", Code={"ZipFile": buf.getvalue()}, MemorySize=128, Timeout=3)

    moto_auth(endpoint, b"0")
    return out


def moto_auth(endpoint, unauthenticated_actions):
    """moto checks auth once this many actions have passed since the call (0: from now on)."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=unauthenticated_actions,
                                 method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()


def state(endpoint, admin):
    out = {}
    s3 = client(endpoint, "s3", admin)
    out["s3"] = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket="prod-artifacts").get("Contents", [])}
    ec2 = client(endpoint, "ec2", admin)
    out["ec2"] = {i["InstanceId"]: i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    asg = client(endpoint, "autoscaling", admin)
    out["asg"] = {g["AutoScalingGroupName"]: g["DesiredCapacity"] for g in asg.describe_auto_scaling_groups()["AutoScalingGroups"]}
    ecs = client(endpoint, "ecs", admin)
    out["ecs"] = {s["serviceName"]: s["desiredCount"] for s in ecs.describe_services(cluster="prod", services=["api", "worker"])["services"]}
    ddb = client(endpoint, "dynamodb", admin)
    out["dynamodb"] = {t: sorted(i["id"]["S"] for i in ddb.scan(TableName=t)["Items"]) for t in ("orders", "audit")}
    sqs = client(endpoint, "sqs", admin)
    out["sqs"] = {}
    for q in ("jobs", "other"):
        url = sqs.get_queue_url(QueueName=q)["QueueUrl"]
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        out["sqs"][q] = int(a["Attributes"]["ApproximateNumberOfMessages"])
    # moto wrongly rejects the signature of body-less rest-json GETs (its own bug: botocore's
    # signature is valid), so the
    # Lambda state is read with auth briefly off; the tests run one request at a time.
    moto_auth(endpoint, b"inf")
    try:
        lam = client(endpoint, "lambda", admin)
        out["lambda"] = {f: lam.get_function_configuration(FunctionName=f)["MemorySize"] for f in ("resize", "billing")}
    finally:
        moto_auth(endpoint, b"0")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["setup", "state"])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--admin", nargs=2)
    a = ap.parse_args()
    if a.command == "setup":
        print(json.dumps(setup(a.endpoint)))
    else:
        print(json.dumps(state(a.endpoint, a.admin)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
