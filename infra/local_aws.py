#!/usr/bin/env python3
"""The Python half of infra/local-aws.sh: the emulated AWS endpoint and its setup.

  local_aws.py serve --port P --lambda-url http://127.0.0.1:L
      One process serving moto's WSGI app (DynamoDB, Step Functions with execution turned on,
      everything else moto has) on 127.0.0.1:P, with a middleware in front that forwards Lambda
      invocations (`POST /2015-03-31/functions/<name>/invocations`) to the Lambda emulator
      (`cargo lambda watch`) at L, translated to what real Lambda answers.

  local_aws.py setup --endpoint http://127.0.0.1:P [--template template.yaml]
                     [--asl infra/statemachine.asl.json] [--table orchestrator-local] ...
      Turns Step Functions execution on, creates the DynamoDB table from the template's RunsTable
      Properties and the state machine from the ASL with its DefinitionSubstitutions filled in.
      Also creates the runs queue and its dead-letter queue (SQS) from the template's RunsQueue
      and RunsDeadLetterQueue: visibility timeout, retention and the redrive policy.
      Idempotent: an existing table is kept, an existing state machine gets the new definition,
      existing queues get the template's attributes again.
      Prints KEY=VALUE lines (TABLE_NAME, STATE_MACHINE_ARN, RUNS_QUEUE_URL, DLQ_URL) on stdout.

  local_aws.py free-port            prints a free TCP port on 127.0.0.1
  local_aws.py wait URL --timeout S [--pid PID] [--what NAME] [--log FILE]
      waits until URL answers any HTTP status; fails early when PID exits.
  local_aws.py functions [--repo R]  the function binaries: `PACKAGE BINARY` lines
  local_aws.py warm --lambda-port L NAME...   invokes each function once (starts its instance)
  local_aws.py merge-env OUT [--env-file F] [--set K=V ...]
      writes a KEY=VALUE env file for `cargo lambda watch --env-file`: the --set pairs, then
      F's pairs over them.

Only the standard library, moto (with werkzeug), boto3 and PyYAML (moto[server] brings both).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/orchestrator-local"
# A Lambda invocation can run for minutes (a model call, a cold `cargo run`); the real limit is
# the function's own timeout, enforced by nobody here.
FORWARD_TIMEOUT_S = 900

INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")


def log(msg: str) -> None:
    print(f"local-aws: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Lambda forwarding
# ---------------------------------------------------------------------------------------------


def function_name_of(raw: str) -> str:
    """The bare function name from what a Lambda client puts in the invoke path.

    Accepts `NAME`, `NAME:qualifier`, `ACCT:function:NAME[:qualifier]` and
    `arn:aws:lambda:REGION:ACCT:function:NAME[:qualifier]`, URL-encoded or not.
    """
    name = urllib.parse.unquote(raw)
    parts = name.split(":")
    if parts[0] == "arn" and len(parts) >= 7 and parts[5] == "function":
        return parts[6]
    if len(parts) >= 3 and parts[1] == "function":
        return parts[2]
    return parts[0]


def lambda_error(status: int, error_type: str, message: str) -> tuple[int, dict, bytes]:
    """A Lambda *service* error (not a function error), shaped as Lambda's REST-JSON errors."""
    body = json.dumps({"Type": "User" if status < 500 else "Service", "message": message})
    return status, {"x-amzn-ErrorType": error_type}, body.encode()


def translate(status: int, headers: dict, body: bytes, name: str) -> tuple[int, dict, bytes]:
    """cargo lambda watch's answer -> what real Lambda answers for the same outcome."""
    out_headers = {"X-Amz-Executed-Version": "$LATEST"}
    if status == 200:
        return 200, out_headers, body
    if status == 404:
        # watch: {"title": "Missing function", "detail": "... Available functions: {...}"}
        detail = body.decode("utf-8", "replace")
        return lambda_error(
            404,
            "ResourceNotFoundException",
            f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name} "
            f"(cargo lambda watch serves the workspace's binaries: {detail})",
        )
    # watch answers a handler error as HTTP 500 with {"errorType", "errorMessage"} and no
    # X-Amz-Function-Error header; real Lambda answers 200 with the header and the same body.
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not (isinstance(parsed, dict) and "errorType" in parsed):
        body = json.dumps(
            {
                "errorType": "Runtime.Unknown",
                "errorMessage": f"cargo lambda watch answered HTTP {status}: "
                + body.decode("utf-8", "replace")[:2000],
            }
        ).encode()
    out_headers["X-Amz-Function-Error"] = "Unhandled"
    return 200, out_headers, body


class LambdaForwarder:
    """WSGI middleware: Lambda invocations to the Lambda emulator, the rest to moto (locked).

    The lock serialises moto's own requests (moto's DynamoDB backend takes no lock; a
    transaction must be atomic, as it is in DynamoDB). Forwarded invocations must NOT hold it:
    the Step Functions interpreter thread waits on the invocation while the function itself
    calls DynamoDB on this same server.
    """

    def __init__(self, moto_app, lambda_url: str):
        self.moto_app = moto_app
        parsed = urllib.parse.urlsplit(lambda_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.lock = threading.Lock()
        # Requests by API operation ("DynamoDB.PutItem", "Lambda.Invoke", ...), for the figures
        # of a run (GET /local-aws/counters; the test reads them before and after a run).
        self.counters: dict = {}
        self.counters_lock = threading.Lock()

    def count(self, key: str) -> None:
        with self.counters_lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO") == "/local-aws/counters":
            with self.counters_lock:
                body = json.dumps(self.counters, sort_keys=True).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            self.count("DynamoDB." + target.split(".", 1)[-1])
        elif target.startswith("AWSStepFunctions."):
            self.count("StepFunctions." + target.split(".", 1)[-1])
        if environ.get("REQUEST_METHOD") == "POST":
            raw_path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
            raw_path = raw_path.split("?", 1)[0] or environ.get("PATH_INFO", "")
            m = INVOKE_PATH.match(raw_path) or INVOKE_PATH.match(environ.get("PATH_INFO", ""))
            if m:
                self.count("Lambda.Invoke")
                return self.invoke(environ, start_response, function_name_of(m.group(1)))
        with self.lock:
            # Consume the body inside the lock: the whole request is one step of the backend.
            return list(self.moto_app(environ, start_response))

    def invoke(self, environ, start_response, name: str):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        invocation_type = environ.get("HTTP_X_AMZ_INVOCATION_TYPE", "RequestResponse")
        request_id = str(uuid.uuid4())
        if invocation_type == "DryRun":
            status, headers, out = 204, {}, b""
        elif invocation_type == "Event":
            threading.Thread(
                target=self.forward, args=(name, body, request_id), daemon=True
            ).start()
            status, headers, out = 202, {}, b""
        else:
            status, headers, out = self.forward(name, body, request_id)
        headers = {"Content-Type": "application/json", **headers}
        headers["x-amzn-RequestId"] = request_id
        headers["Content-Length"] = str(len(out))
        reason = http.client.responses.get(status, "")
        start_response(f"{status} {reason}", list(headers.items()))
        return [out]

    def forward(self, name: str, body: bytes, request_id: str) -> tuple[int, dict, bytes]:
        started = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=FORWARD_TIMEOUT_S)
        try:
            conn.request(
                "POST",
                f"/2015-03-31/functions/{urllib.parse.quote(name, safe='')}/invocations",
                body=body,
                headers={"Content-Type": "application/json", "Connection": "close"},
            )
            resp = conn.getresponse()
            answer = translate(resp.status, dict(resp.getheaders()), resp.read(), name)
            upstream = resp.status
        except (OSError, http.client.HTTPException) as e:
            answer = lambda_error(
                503,
                "ServiceException",
                f"the Lambda emulator (cargo lambda watch) at {self.host}:{self.port} did not "
                f"answer for {name}: {e!r}; is it running? (infra/local-aws.sh up starts it)",
            )
            upstream = "none"
        finally:
            conn.close()
        ms = (time.monotonic() - started) * 1000
        error = answer[1].get("X-Amz-Function-Error") or answer[1].get("x-amzn-ErrorType") or ""
        log(f"lambda {name} {request_id}: watch {upstream} -> {answer[0]} {error} {ms:.0f} ms")
        return answer


def patch_stop_interrupts_callback_waits() -> None:
    """StopExecution ends a `.waitForTaskToken` wait at once, ABORTED, as on AWS.

    moto's interpreter marks the execution stopped but leaves a waiting task blocked until its
    token arrives or its timeout passes (an approval waits up to a day): the execution stays
    RUNNING. Here the stop also wakes the execution's callback waits; the woken wait ends as a
    timeout (one TaskTimedOut event in the history, which AWS would not record), and a stopped
    execution keeps its ABORTED end instead of the failure that timeout would make it.
    Skipped, with a note in the log, if moto's internals have moved.
    """
    try:
        from moto.stepfunctions.parser.asl.eval.environment import Environment
        from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped
    except ImportError as e:
        log(f"note: StopExecution will not end a waitForTaskToken wait early ({e!r})")
        return
    set_stop, set_error = Environment.set_stop, Environment.set_error
    if getattr(set_stop, "local_aws_patched", False):
        return

    def set_stop_and_wake(self, stop_date, cause, error):
        set_stop(self, stop_date=stop_date, cause=cause, error=error)
        pool = getattr(getattr(self, "callback_pool_manager", None), "_pool", None)
        for endpoint in list((pool or {}).values()):
            interrupt = getattr(endpoint, "interrupt_all", None)
            if interrupt is not None:
                interrupt()

    def set_error_unless_stopped(self, error):
        if isinstance(getattr(self, "_program_state", None), ProgramStopped):
            return
        set_error(self, error)

    set_stop_and_wake.local_aws_patched = True
    Environment.set_stop = set_stop_and_wake
    Environment.set_error = set_error_unless_stopped


def serve(args) -> None:
    os.environ["MOTO_PORT"] = str(args.port)
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    from werkzeug.serving import WSGIRequestHandler, run_simple
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    class Handler(WSGIRequestHandler):
        # Small responses written in pieces would otherwise wait on the client's delayed ACK.
        disable_nagle_algorithm = True

        def log_request(self, code="-", size="-"):  # one line per forwarded call is enough
            pass

    patch_stop_interrupts_callback_waits()
    app = LambdaForwarder(DomainDispatcherApplication(create_backend_app), args.lambda_url)
    log(f"moto + Lambda forwarding on 127.0.0.1:{args.port}; Lambda -> {args.lambda_url}")
    run_simple("127.0.0.1", args.port, app, threaded=True, request_handler=Handler)


# ---------------------------------------------------------------------------------------------
# Template reading
# ---------------------------------------------------------------------------------------------


class CfnTag:
    """A CloudFormation short-form intrinsic (!Ref, !GetAtt, !Sub, ...), kept unevaluated."""

    def __init__(self, tag: str, value):
        self.tag = tag.lstrip("!")
        self.value = value

    def __repr__(self) -> str:
        return f"!{self.tag} {self.value!r}"


def load_template(path: str) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_tag(loader, tag_suffix, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        return CfnTag(tag_suffix, value)

    Loader.add_multi_constructor("!", construct_tag)
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=Loader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(doc, dict) or not isinstance(doc.get("Resources"), dict):
        raise SystemExit(f"{path}: not a CloudFormation template (no Resources section)")
    return doc


def plain(value, where: str):
    """Fails when a value the emulation needs is an unevaluated intrinsic."""
    if isinstance(value, CfnTag):
        raise SystemExit(
            f"{where} is {value!r}; local-aws cannot evaluate CloudFormation intrinsics there "
            "(use a literal value in template.yaml, or extend infra/local_aws.py)"
        )
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
    return value


def table_spec(template: dict, logical_id: str) -> dict:
    res = template["Resources"].get(logical_id)
    if not isinstance(res, dict):
        raise SystemExit(f"template has no resource {logical_id} (the DynamoDB table)")
    props = res.get("Properties") or {}
    where = f"{logical_id}.Properties"
    spec = {}
    for key in ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes",
                "LocalSecondaryIndexes", "BillingMode", "ProvisionedThroughput",
                "StreamSpecification"):
        if key in props:
            spec[key] = plain(props[key], f"{where}.{key}")
    if "KeySchema" not in spec or "AttributeDefinitions" not in spec:
        raise SystemExit(f"{where} lacks KeySchema or AttributeDefinitions")
    spec.setdefault("BillingMode", "PAY_PER_REQUEST")
    if spec["BillingMode"] == "PAY_PER_REQUEST":
        spec.pop("ProvisionedThroughput", None)
        for gsi in spec.get("GlobalSecondaryIndexes", []):
            gsi.pop("ProvisionedThroughput", None)
    for gsi in spec.get("GlobalSecondaryIndexes", []) + spec.get("LocalSecondaryIndexes", []):
        proj = gsi.get("Projection")
        if isinstance(proj, dict) and "NonKeyAttributes" in proj:
            proj["NonKeyAttributes"] = list(proj["NonKeyAttributes"])
    if "StreamSpecification" in spec:
        stream = spec["StreamSpecification"]
        spec["StreamSpecification"] = {"StreamEnabled": True, **stream}
    ttl = props.get("TimeToLiveSpecification")
    ttl = plain(ttl, f"{where}.TimeToLiveSpecification") if ttl else None
    return {"create": spec, "ttl": ttl}


FUNCTION_TYPES = {"AWS::Serverless::Function", "AWS::Lambda::Function"}
TABLE_TYPES = {"AWS::DynamoDB::Table", "AWS::Serverless::SimpleTable"}
STATE_MACHINE_TYPES = {"AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine"}


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def binary_of(logical_id: str, resource: dict) -> str:
    """The workspace binary (= the function's name under cargo lambda watch) of a function."""
    build = (resource.get("Metadata") or {}).get("BuildProperties") or {}
    if isinstance(build.get("Binary"), str):
        return build["Binary"]
    code_uri = (resource.get("Properties") or {}).get("CodeUri")
    if isinstance(code_uri, str) and "target/lambda/" in code_uri:
        return code_uri.rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"(Function|Fn|Lambda)$", "", logical_id)
    return base.lower()


def machine_type(template: dict, asked: str | None) -> str:
    """The state machine type to emulate: the one asked for, or the template's default."""
    if asked:
        return asked.upper()
    param = (template.get("Parameters") or {}).get("StateMachineType") or {}
    return str(param.get("Default", "STANDARD")).upper()


def substitutions(template: dict, table: str, sm_type: str) -> tuple[dict, str | None]:
    """Values for the DefinitionSubstitutions of the template's state machine of type
    `sm_type`, and its DefinitionUri."""
    resources = template["Resources"]
    machines = [r for r in resources.values()
                if isinstance(r, dict) and r.get("Type") in STATE_MACHINE_TYPES]
    props = {}
    for machine in machines:
        p = machine.get("Properties") or {}
        kind = p.get("Type", "STANDARD")
        if isinstance(kind, str) and kind.upper() == sm_type:
            props = p
            break
    out = {}
    for key, value in (props.get("DefinitionSubstitutions") or {}).items():
        resolved = resolve(value, resources, table)
        if resolved is not None:
            out[key] = resolved
    uri = props.get("DefinitionUri")
    return out, uri if isinstance(uri, str) else None


def resolve(value, resources: dict, table: str):
    if not isinstance(value, CfnTag):
        return None if isinstance(value, (dict, list)) else str(value)
    if value.tag == "GetAtt":
        target = value.value if isinstance(value.value, list) else str(value.value).split(".", 1)
        logical_id, attr = (target + [""])[:2]
        ref = False
    elif value.tag == "Ref":
        logical_id, attr, ref = str(value.value), "", True
    else:
        return None
    res = resources.get(logical_id)
    if not isinstance(res, dict):
        return None
    if res.get("Type") in FUNCTION_TYPES:
        name = binary_of(logical_id, res)
        return name if ref else function_arn(name)
    if res.get("Type") in TABLE_TYPES:
        if ref:
            return table
        if attr == "Arn":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}"
    return None


def fill_definition(asl: str, subs: dict) -> str:
    missing = []

    def repl(m):
        key = m.group(1)
        if key in subs:
            return subs[key]
        fm = re.fullmatch(r"(\w+?)Function(Arn)?", key)
        if fm:
            name = fm.group(1).lower()
            return function_arn(name) if fm.group(2) else name
        missing.append(key)
        return m.group(0)

    filled = re.sub(r"\$\{([A-Za-z0-9_]+)\}", repl, asl)
    if missing:
        raise SystemExit(
            f"the state machine definition has placeholders local-aws cannot fill: {missing}; "
            "add them to DefinitionSubstitutions in template.yaml as !GetAtt/!Ref of a function "
            "or the table, or as literals"
        )
    return filled


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------


def setup(args) -> None:
    import boto3
    from botocore.config import Config

    endpoint = args.endpoint.rstrip("/")
    req = urllib.request.Request(
        f"{endpoint}/moto-api/config",
        data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()

    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    config = Config(retries={"max_attempts": 2, "mode": "standard"})
    ddb = session.client("dynamodb", endpoint_url=endpoint, config=config)
    sfn = session.client("stepfunctions", endpoint_url=endpoint, config=config)

    template = load_template(args.template) if os.path.exists(args.template) else None
    if template is None:
        raise SystemExit(f"{args.template} not found: the table is created from its "
                         f"{args.table_resource} Properties")
    spec = table_spec(template, args.table_resource)
    existing = ddb.list_tables()["TableNames"]
    if args.table in existing:
        log(f"table {args.table} exists: kept")
    else:
        ddb.create_table(TableName=args.table, **spec["create"])
        if spec["ttl"]:
            ddb.update_time_to_live(TableName=args.table, TimeToLiveSpecification=spec["ttl"])
        log(f"table {args.table} created from {args.table_resource}")

    sm_type = machine_type(template, args.type)
    subs, uri = substitutions(template, args.table, sm_type)
    args.asl = args.asl or uri
    if not args.asl or not os.path.exists(args.asl):
        raise SystemExit(f"{args.asl} not found (the {sm_type} state machine's definition)")
    with open(args.asl, encoding="utf-8") as f:
        asl = f.read()
    definition = fill_definition(asl, subs)
    json.loads(definition)  # a broken definition fails here, with the JSON error
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{args.state_machine}"
    names = [m["name"] for p in sfn.get_paginator("list_state_machines").paginate()
             for m in p["stateMachines"]]
    if args.state_machine in names and sfn.describe_state_machine(stateMachineArn=arn)["type"] != sm_type:
        # The type cannot be updated: a stack brought up again with another type starts anew.
        sfn.delete_state_machine(stateMachineArn=arn)
        names.remove(args.state_machine)
    if args.state_machine in names:
        sfn.update_state_machine(stateMachineArn=arn, definition=definition, roleArn=ROLE_ARN)
        log(f"state machine {args.state_machine} updated from {args.asl}")
    else:
        arn = sfn.create_state_machine(
            name=args.state_machine, definition=definition, roleArn=ROLE_ARN, type=sm_type
        )["stateMachineArn"]
        log(f"state machine {args.state_machine} ({sm_type}) created from {args.asl}")
    sqs = session.client("sqs", endpoint_url=endpoint, config=config)
    runs_url, dlq_url = setup_queues(sqs, template, args.queue)
    print(f"TABLE_NAME={args.table}")
    print(f"STATE_MACHINE_ARN={arn}")
    print(f"STATE_MACHINE_TYPE={sm_type}")
    print(f"RUNS_QUEUE_URL={runs_url}")
    print(f"DLQ_URL={dlq_url}")


def parameter_default(template: dict, value, where: str):
    """A literal, or a !Ref to a parameter: its Default."""
    if isinstance(value, CfnTag) and value.tag == "Ref":
        param = (template.get("Parameters") or {}).get(value.value) or {}
        if "Default" not in param:
            raise SystemExit(f"{where}: !Ref {value.value} has no parameter Default to use locally")
        return param["Default"]
    return plain(value, where)


def queue_attributes(template: dict, logical_id: str) -> dict:
    """The SQS attributes of a queue resource that the emulation honours (intrinsics aside)."""
    res = template["Resources"].get(logical_id)
    if not isinstance(res, dict):
        raise SystemExit(f"template has no resource {logical_id} (an SQS queue)")
    props = res.get("Properties") or {}
    attrs = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod"):
        if key in props:
            attrs[key] = str(parameter_default(template, props[key], f"{logical_id}.{key}"))
    return attrs


def setup_queues(sqs, template: dict, name: str) -> tuple[str, str]:
    """The runs queue `name` and its dead-letter queue `name`-dlq, redrive policy included."""

    def ensure(queue: str, attrs: dict) -> str:
        try:
            url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        except sqs.exceptions.QueueDoesNotExist:
            url = sqs.create_queue(QueueName=queue, Attributes=attrs)["QueueUrl"]
            log(f"queue {queue} created")
            return url
        if attrs:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
        log(f"queue {queue} exists: attributes applied again")
        return url

    dlq_url = ensure(f"{name}-dlq", queue_attributes(template, "RunsDeadLetterQueue"))
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    attrs = queue_attributes(template, "RunsQueue")
    redrive = (template["Resources"]["RunsQueue"].get("Properties") or {}).get("RedrivePolicy")
    if isinstance(redrive, dict) and "maxReceiveCount" in redrive:
        count = parameter_default(template, redrive["maxReceiveCount"],
                                  "RunsQueue.RedrivePolicy.maxReceiveCount")
        attrs["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(count)})
    return ensure(name, attrs), dlq_url


# ---------------------------------------------------------------------------------------------
# Small helpers for the shell script
# ---------------------------------------------------------------------------------------------


def free_port(_args) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def wait(args) -> None:
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            urllib.request.urlopen(args.url, timeout=5).read()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is serving
        except (OSError, http.client.HTTPException):
            pass
        if args.pid:
            try:
                os.kill(args.pid, 0)
            except ProcessLookupError:
                tail = ""
                if args.log and os.path.exists(args.log):
                    with open(args.log, encoding="utf-8", errors="replace") as f:
                        tail = "".join(f.readlines()[-25:])
                raise SystemExit(f"{args.what} exited before answering on {args.url}; "
                                 f"the end of its log ({args.log}):\n{tail}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{args.what} did not answer on {args.url} within "
                             f"{args.timeout:.0f} s; see its log: {args.log}")
        time.sleep(0.2)


def functions(args) -> None:
    """The workspace's function binaries (packages under functions/): `PACKAGE BINARY` lines."""
    import subprocess

    out = subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1",
         "--manifest-path", os.path.join(args.repo, "Cargo.toml")],
        check=True, capture_output=True, text=True,
    ).stdout
    root = os.path.join(os.path.realpath(args.repo), "functions") + os.sep
    for pkg in json.loads(out)["packages"]:
        if not os.path.realpath(pkg["manifest_path"]).startswith(root):
            continue
        for target in pkg["targets"]:
            if "bin" in target["kind"]:
                print(pkg["name"], target["name"])


def warm(args) -> None:
    """Invokes each function once (payload `{}`: the contract answers Request.Invalid), so its
    first instance is started, and rebuilt if its sources changed, before a test needs it."""
    started = time.monotonic()
    results = {}

    def one(name):
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", args.lambda_port, timeout=args.timeout)
        try:
            conn.request("POST", f"/2015-03-31/functions/{name}/invocations", body=b"{}",
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            results[name] = f"{resp.status} in {time.monotonic() - t0:.1f} s"
        except (OSError, http.client.HTTPException) as e:
            results[name] = f"no answer ({e!r})"
        finally:
            conn.close()

    threads = [threading.Thread(target=one, args=(n,)) for n in args.names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    detail = ", ".join(f"{n}: {r}" for n, r in results.items())
    log(f"functions started in {time.monotonic() - started:.1f} s ({detail})")


def parse_env_file(path: str) -> dict:
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):].lstrip()
            key, sep, value = line.partition("=")
            if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
                raise SystemExit(f"{path}:{n}: not KEY=VALUE: {line}")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[key.strip()] = value
    return out


def quote_env(key: str, value: str) -> str:
    """A value as cargo lambda's env file reader takes it back unchanged.

    It rejects an unquoted `=` in a value (SPECIALIST_FUNCTIONS has several), keeps single-quoted
    text literally, and in double quotes unescapes `\\"` but not `\\\\`.
    """
    if "'" not in value:
        return f"'{value}'"
    if "\\" not in value:
        return '"' + value.replace('"', '\\"') + '"'
    raise SystemExit(
        f"{key}: a value holding both ' and a backslash cannot be passed through "
        "cargo lambda watch's env file; change the value"
    )


def merge_env(args) -> None:
    env = {}
    for pair in args.set or []:
        key, _, value = pair.partition("=")
        env[key] = value
    if args.env_file:
        env.update(parse_env_file(args.env_file))
    with open(args.out, "w", encoding="utf-8") as f:
        for key, value in env.items():
            f.write(f"{key}={quote_env(key, value)}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--lambda-url", required=True)
    s.set_defaults(func=serve)

    s = sub.add_parser("setup")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--template", default="template.yaml")
    s.add_argument("--asl", help="the definition (default: the DefinitionUri of the template's "
                   "state machine of that type)")
    s.add_argument("--type", help="EXPRESS or STANDARD (default: the template's StateMachineType)")
    s.add_argument("--table", default="orchestrator-local")
    s.add_argument("--table-resource", default="RunsTable")
    s.add_argument("--state-machine", default="orchestrator-local-runs")
    s.add_argument("--queue", default="orchestrator-local-runs",
                   help="the runs queue; its dead-letter queue is QUEUE-dlq")
    s.set_defaults(func=setup)

    s = sub.add_parser("free-port")
    s.set_defaults(func=free_port)

    s = sub.add_parser("wait")
    s.add_argument("url")
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--pid", type=int)
    s.add_argument("--what", default="the server")
    s.add_argument("--log")
    s.set_defaults(func=wait)

    s = sub.add_parser("functions")
    s.add_argument("--repo", default=".")
    s.set_defaults(func=functions)

    s = sub.add_parser("warm")
    s.add_argument("--lambda-port", type=int, required=True)
    s.add_argument("--timeout", type=float, default=1200)
    s.add_argument("names", nargs="+")
    s.set_defaults(func=warm)

    s = sub.add_parser("merge-env")
    s.add_argument("out")
    s.add_argument("--env-file")
    s.add_argument("--set", action="append")
    s.set_defaults(func=merge_env)

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
