#!/usr/bin/env python3
"""Writes crates/gateway/openapi.json, the API document the agent serves: python3 scripts/openapi.py > crates/agent/openapi.json"""
import json
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def arr(x): return {"type":"array","items":x}
I={"type":"integer","format":"int64","minimum":0}
SI={"type":"integer","format":"int64"}
S={"type":"string"}
B={"type":"boolean"}
def nul(x): 
    x=dict(x); x["nullable"]=True; return x
def obj(props, required=None, extra=False):
    o={"type":"object","properties":props,"required":required if required is not None else list(props.keys())}
    if not extra: o["additionalProperties"]=False
    return o

schemas={
 "ErrorBody": obj({"code":S,"message":S,"detail":{"type":"object"}}, ["code","message"]),
 "ServiceSummary": obj({"name":S,"id":dict(S,description="PROVIDER/NAME: the service's identity on the gateway, unique whoever asks; two providers may each have a service of the same name"),"provider":S,"version":S,"state":S,"health":S,"pid":nul({"type":"integer","format":"int32"}),
    "desired":S,"restarts":I,"priority":{"type":"integer","minimum":0,"maximum":100},"exit_code":nul({"type":"integer","format":"int32"}),
    "started_at_ms":nul(I),"reason":nul(S),
    "signed_by":dict(nul(S),description="Id of the trusted provider key whose signature admitted the package; null when unsigned"),
    "unsigned":dict(B,description="True when no trusted key signed the package (installed with allow_unsigned)")}),
 "TrustRequest": obj({"provider":S,"public_key":dict(S,description="The text of the provider's .pub file (`shg-ed25519 PROVIDER BASE64`)"),
    "services":dict(arr(S),description="Patterns of service names the key may publish (`camera`, `cam-*`); empty or absent: any")},["provider","public_key"]),
 "PullRequest": obj({"reference":dict(S,description="REGISTRY/REPOSITORY[:TAG|@sha256:HEX]"),"start":dict(B,description="Start it once installed (default true)"),
    "allow_unsigned":dict(B,description="Operator only: install without a trusted signature"),
    "manifest":dict(S,description="The text of shg-service.toml, for an image without the org.shg.manifest label (a standard image): the manifest given beside it, completed from the image's config; the signature must cover the image and this manifest together")},["reference"]),
 "TrustRule": obj({"key_id":S,"provider":S,"services":arr(S),"public_key":S,"added_ms":I}),
 "ServiceRef": obj({"provider":S,"name":S}),
 "Subscriptions": obj({"controller":dict(nul(S),description="The fleet controller the gateway syncs with; null in no fleet"),
    "gateway_id":nul(S),"subscriptions":arr(ref("ServiceRef"))}),
 "Subscribe": obj({"name":S,"provider":dict(nul(S),description="Needed only where several providers publish the name")},["name"]),
 "FleetCatalogEntry": obj({"provider":S,"name":S,"version":S,"digest":S,"size":I,"signer":S,"description":S,"published_ms":SI,"approved":B}),
 "ServicePaths": obj({"rootfs":S,"data":S,"bundle":S,"logs":S}),
 "Event": obj({"id":SI,"time_ms":I,"service":nul(S),"kind":S,"message":S}),
 "Verdict": obj({"service":S,"admitted":B,"message":S}),
 "GatewayInfo": obj({"version":S,"state_dir":S,"services":I,"pid":I}),
 "Amounts": obj({"cpu":I,"memory":I,"storage":I,"bandwidth_down":I,"bandwidth_up":I}),
 "CapacityView": obj({**{k:ref("Amounts") for k in ["capacity","system_reserve","available","reserved","free"]},
    "tenants":{"type":"object","description":"Per provider with a cap or an installed service","additionalProperties":ref("Tenant")}}),
 "AmountsCap": obj({k:nul(I) for k in ["cpu","memory","storage","bandwidth_down","bandwidth_up"]}),
 "Tenant": obj({"cap":dict(ref("AmountsCap")),"reserved":ref("Amounts")}),
 "ResourceTotals": obj({"capacity":I,"system_reserve":I,"reserved":I,"used":nul(I),"free":I}),
 "GatewayUse": obj({k:ref("ResourceTotals") for k in ["cpu","memory","storage","bandwidth_down","bandwidth_up"]}),
 "CpuUse": obj({"used":nul(I),"reserve":I,"limit":nul(I),"throttled_periods":nul(I),"periods":nul(I),"throttled_ms":nul(I)}),
 "MemoryUse": obj({"used":nul(I),"cache":nul(I),"reserve":I,"limit":nul(I),"oom_kills":I}),
 "PidsUse": obj({"current":nul(I),"limit":I}),
 "IoUse": obj({"read_bytes":nul(I),"write_bytes":nul(I)}),
 "StorageUse": obj({"used":nul(I),"reserve":I,"limit":I,"logs":I}),
 "BandwidthUse": obj({"used":nul(I),"reserve":I,"limit":nul(I),"bytes":nul(I)}),
 "ServiceUse": obj({"name":S,"provider":S,"state":S,"priority":{"type":"integer"},"cpu":ref("CpuUse"),"memory":ref("MemoryUse"),
    "pids":ref("PidsUse"),"io":ref("IoUse"),"storage":ref("StorageUse"),"bandwidth_down":ref("BandwidthUse"),"bandwidth_up":ref("BandwidthUse")}),
 "StatsView": obj({"sampled_at_ms":I,"cgroups":{"type":"string","enum":["v1","v2"]},"gateway":nul(ref("GatewayUse")),"services":arr(ref("ServiceUse"))}),
 "PriorityRequest": obj({"priority":{"type":"integer","format":"int32"}}),
 "ExecRequest": obj({"command":arr(S)}),
 "TokenRequest": obj({"realm":{"type":"string","enum":["operator","provider","home"]},"provider":nul(S),
    "client_cert":dict(nul(S),description="A PEM client certificate to register instead of making a token")},["realm"]),
 "NewToken": obj({"id":SI,"realm":S,"provider":nul(S),"token":dict(nul(S),description="Shown this once; absent when a certificate was registered"),
    "client_cert_sha256":nul(S)}),
 "TokenInfo": obj({"id":SI,"realm":S,"provider":nul(S),"kind":{"type":"string","enum":["token","client-cert"]},"created_ms":I,"revoked_ms":nul(I)}),
 "AuditEntry": obj({"id":SI,"time_ms":I,"principal":S,"action":S,"status":{"type":"integer","minimum":100,"maximum":599}}),
}
# nullable $ref needs allOf in 3.0
schemas["StatsView"]["properties"]["gateway"]={"allOf":[ref("GatewayUse")],"nullable":True}
detail=obj({"name":S,"id":dict(S,description="PROVIDER/NAME: the service's identity on the gateway, unique whoever asks; two providers may each have a service of the same name"),"provider":S,"version":S,"state":S,"health":S,"pid":nul({"type":"integer","format":"int32"}),
    "desired":S,"restarts":I,"priority":{"type":"integer","minimum":0,"maximum":100},"exit_code":nul({"type":"integer","format":"int32"}),
    "started_at_ms":nul(I),"reason":nul(S),"signed_by":nul(S),"unsigned":B,"description":S,"image_digest":S,"installed_at_ms":I,"manifest":{"type":"object"},
    "address":dict(nul(S),description="The service's IPv4 address on the gateway's service network; null when networking is off"),
    "previous_version":dict(nul(S),description="The version `shg rollback` goes back to, when an update kept one"),
    "source":dict(nul(S),description="The registry reference the running version was pulled from"),
    "paths":ref("ServicePaths"),"events":arr(ref("Event"))})
schemas["ServiceDetail"]=detail

def err(desc): return {"description":desc,"content":{"application/json":{"schema":ref("ErrorBody")}}}
E={"400":err("Bad request: the message names the field and the rule"),"401":err("No valid token"),"403":err("The caller's realm may not do this"),
   "404":err("No such object, or one the caller may not see"),"429":err("Too many requests"),"500":err("Internal error")}
def resp(code, desc, schema=None, ctype="application/json", more=()):
    r={code:{"description":desc}}
    if schema is not None: r[code]["content"]={ctype:{"schema":schema}}
    for m in more: r[m]=E[m] if m in E else err(m)
    for k in ["400","401","403","404","429","500"]:
        r.setdefault(k,E[k])
    return r
name={"name":"name","in":"path","required":True,"schema":{"type":"string","pattern":"^([a-z][a-z0-9-]{0,62}/)?[a-z][a-z0-9-]{0,62}$"},"description":"The service: its name where the caller sees only one service of that name, else its id PROVIDER/NAME (the slash percent-encoded, %2F)","example":"camera"}
def q(n,schema,desc): return {"name":n,"in":"query","required":False,"schema":schema,"description":desc}
manifest_header={"name":"X-SHG-Manifest","in":"header","required":False,"schema":{"type":"string","format":"byte","maxLength":87400},
  "description":"For an image without the org.shg.manifest label (a standard image, as docker, podman or buildah build it): the bytes of its shg-service.toml, base64 (standard alphabet, padded), at most 64 KiB before encoding. The image's config (Entrypoint and Cmd, Env, User, WorkingDir, ExposedPorts) fills in what the manifest's [run] leaves out. The signature must cover the image and this manifest together (`shg sign IMAGE --manifest FILE`). Without it, the package's label is its manifest"}
conflict=err("Not possible in the service's current state, or the name is taken")
refused={"description":"Admission refused (`admission-refused`, the refusal in `detail`; for an image over its allowance, its sizes) or a conflict","content":{"application/json":{"schema":ref("ErrorBody")}}}

paths={
 "/openapi.json":{"get":{"operationId":"openapi","summary":"This document","security":[],"responses":{"200":{"description":"The OpenAPI document","content":{"application/json":{"schema":{"type":"object"}}}}}}},
 "/v1/gateway":{"get":{"operationId":"gateway","summary":"The agent: version, state directory, services the caller sees","responses":resp("200","The agent",ref("GatewayInfo"))}},
 "/v1/gateway/capacity":{"get":{"operationId":"capacity","summary":"Capacity, system reserve, reserved and free per resource (operator, home)","responses":resp("200","Per resource",ref("CapacityView"))}},
 "/v1/stats":{"get":{"operationId":"stats","summary":"What each service the caller sees uses, against its reservation and limit; gateway totals for operator and home","responses":resp("200","Use",ref("StatsView"))}},
 "/metrics":{"get":{"operationId":"metrics","summary":"Prometheus metrics, scoped to the caller's realm","responses":resp("200","Prometheus text format 0.0.4",{"type":"string"},"text/plain")}},
 "/v1/services":{
   "get":{"operationId":"listServices","summary":"The services the caller sees","responses":resp("200","Services",arr(ref("ServiceSummary")))},
   "post":{"operationId":"install","summary":"Install a package (an OCI image layout tar, sent as application/octet-stream; a standard image with its manifest in X-SHG-Manifest), and start it unless start=false",
     "parameters":[q("start",B,"Start it once installed (default true)"),q("dry_run",B,"Only say whether it would be admitted"),
                   q("stop",S,"Services (comma-separated) the caller agreed to stop to make room"),
                   q("allow_unsigned",B,"Operator only, for local development: install without a trusted signature"),
                   q("source",S,"The registry reference the package was pulled from (kept for updates by version)"),manifest_header],
     "requestBody":{"required":True,"content":{"application/octet-stream":{"schema":{"type":"string","format":"binary"}}}},
     "responses":dict(resp("201","Installed",ref("ServiceDetail")),**{"200":{"description":"Dry run: it would be admitted","content":{"application/json":{"schema":ref("Verdict")}}},"409":refused,"413":err("The package is larger than the agent accepts")})}},
 "/v1/services/{name}":{"parameters":[name],
   "get":{"operationId":"getService","summary":"One service: summary, manifest, paths, recent events","responses":resp("200","The service",ref("ServiceDetail"))},
   "delete":{"operationId":"removeService","summary":"Stop the service and delete it with its data","responses":dict(resp("204","Removed"),**{"409":conflict})}},
 "/v1/services/{name}/start":{"parameters":[name],"post":{"operationId":"start","summary":"Start it (admitted like an install)",
   "parameters":[q("dry_run",B,"Only say whether it would be admitted"),q("stop",S,"Services (comma-separated) the caller agreed to stop to make room")],
   "responses":dict(resp("200","Started, or the dry run's verdict",{"oneOf":[ref("ServiceSummary"),ref("Verdict")]}),**{"409":refused})}},
 "/v1/services/{name}/stop":{"parameters":[name],"post":{"operationId":"stop","summary":"SIGTERM, then SIGKILL after the stop timeout","responses":dict(resp("200","Stopped",ref("ServiceSummary")),**{"409":conflict})}},
 "/v1/services/{name}/restart":{"parameters":[name],"post":{"operationId":"restart","summary":"Stop, then start","responses":dict(resp("200","Restarted",ref("ServiceSummary")),**{"409":refused})}},
 "/v1/services/{name}/priority":{"parameters":[name],"post":{"operationId":"setPriority","summary":"The household's ranking, 0..=100 (operator, home)",
   "requestBody":{"required":True,"content":{"application/json":{"schema":ref("PriorityRequest")}}},"responses":resp("200","Ranked",ref("ServiceSummary"))}},
 "/v1/services/{name}/update":{"parameters":[name],"post":{"operationId":"update","summary":"Switch the service to a new package (same name and provider), keeping the current release for a rollback; the agent rolls back by itself if the new one fails within the health window",
   "parameters":[q("allow_unsigned",B,"Operator only: accept a package no trusted key signed"),q("window_s",{"type":"integer","minimum":0,"maximum":3600},"Seconds the new release must stay up and healthy (default 30)"),
                 q("source",S,"The registry reference the package was pulled from"),manifest_header],
   "requestBody":{"required":True,"content":{"application/octet-stream":{"schema":{"type":"string","format":"binary"}}}},
   "responses":dict(resp("200","Switched; the health window runs on",ref("ServiceDetail")),**{"409":refused,"413":err("The package is larger than the agent accepts")})}},
 "/v1/services/{name}/rollback":{"parameters":[name],"post":{"operationId":"rollback","summary":"Back to the release the last update replaced",
   "responses":dict(resp("200","Rolled back",ref("ServiceDetail")),**{"409":refused})}},
 "/v1/services/{name}/logs":{"parameters":[name],"get":{"operationId":"logs","summary":"The service's log, one JSON object per line (its provider only)",
   "parameters":[q("tail",{"type":"integer","minimum":0},"Only the last N lines"),q("follow",B,"Keep the stream open for new lines")],
   "responses":resp("200","Newline-delimited JSON log entries",{"type":"string"},"application/x-ndjson")}},
 "/v1/services/{name}/exec":{"parameters":[name],"post":{"operationId":"exec","summary":"Run a command inside the service (its provider only); output in frames",
   "requestBody":{"required":True,"content":{"application/json":{"schema":ref("ExecRequest")}}},
   "responses":dict(resp("200","Frames: 1 byte stream (1 stdout, 2 stderr, 3 exit), 4 bytes length, payload",{"type":"string","format":"binary"},"application/vnd.shg.exec-frames"),**{"409":conflict})}},
 "/v1/events":{"get":{"operationId":"events","summary":"The journal, filtered to what the caller sees; a Server-Sent Events stream with follow=true or Accept: text/event-stream",
   "parameters":[q("since",{"type":"integer","format":"int64"},"Only events after this id"),q("service",S,"Only this service's events: its name, or its id PROVIDER/NAME"),
                 q("limit",{"type":"integer","minimum":0},"At most this many (default 200, at most 10000)"),q("follow",B,"Stream new events as they happen")],
   "responses":{**resp("200","Events",arr(ref("Event"))),}}},
 "/v1/tokens":{
   "get":{"operationId":"listTokens","summary":"Tokens, never the tokens themselves (operator)","responses":resp("200","Tokens",arr(ref("TokenInfo")))},
   "post":{"operationId":"createToken","summary":"A new token, shown once (operator)","requestBody":{"required":True,"content":{"application/json":{"schema":ref("TokenRequest")}}},
     "responses":resp("201","The token",ref("NewToken"))}},
 "/v1/tokens/{id}":{"parameters":[{"name":"id","in":"path","required":True,"schema":{"type":"integer","format":"int64"},"example":1}],
   "delete":{"operationId":"revokeToken","summary":"Revoke a token (operator)","responses":resp("204","Revoked")}},
 "/v1/pull":{"post":{"operationId":"pull","summary":"The gateway pulls an image from an OCI registry (its own blob cache) and installs it like an upload",
   "requestBody":{"required":True,"content":{"application/json":{"schema":ref("PullRequest")}}},
   "responses":dict(resp("201","Installed",ref("ServiceDetail")),**{"409":refused})}},
 "/v1/trust":{
   "get":{"operationId":"listTrust","summary":"The trust policy: provider keys and the service names each may publish (operator)","responses":resp("200","Rules",arr(ref("TrustRule")))},
   "post":{"operationId":"addTrust","summary":"Trust a provider's key, or change its rule (operator)","requestBody":{"required":True,"content":{"application/json":{"schema":ref("TrustRequest")}}},
     "responses":resp("201","The rule",ref("TrustRule"))}},
 "/v1/trust/{key_id}":{"parameters":[{"name":"key_id","in":"path","required":True,"schema":{"type":"string","pattern":"^[0-9a-f]{16}$"},"example":"0011223344556677"}],
   "delete":{"operationId":"removeTrust","summary":"Stop trusting a key (operator)","responses":resp("204","Removed")}},
 "/v1/subscriptions":{
   "get":{"operationId":"subscriptions","summary":"The household's subscriptions to the fleet's catalog (operator, household)","responses":resp("200","Subscriptions",ref("Subscriptions"))},
   "post":{"operationId":"subscribe","summary":"Subscribe to a service of the fleet's catalog; the controller adds it to this gateway's desired state (operator, household)",
     "requestBody":{"required":True,"content":{"application/json":{"schema":ref("Subscribe")}}},"responses":dict(resp("201","Subscribed",ref("ServiceRef")),**{"409":refused,"503":err("503")})}},
 "/v1/subscriptions/{name}":{"parameters":[{"name":"name","in":"path","required":True,"schema":{"type":"string"},"example":"camera"}],
   "delete":{"operationId":"unsubscribe","summary":"Leave a service; the gateway removes it (operator, household)","responses":dict(resp("204","Left"),**{"409":refused})}},
 "/v1/fleet/catalog":{"get":{"operationId":"fleetCatalog","summary":"The approved packages of the fleet's catalog (operator, household)",
   "responses":dict(resp("200","Catalog",arr(ref("FleetCatalogEntry"))),**{"409":refused,"503":err("503")})}},
 "/v1/audit":{"get":{"operationId":"audit","summary":"Every mutating call: who, what, when, result (operator)",
   "parameters":[q("since",{"type":"integer","format":"int64"},"Only entries after this id"),q("limit",{"type":"integer","minimum":0},"At most this many (default 1000)")],
   "responses":resp("200","Audit entries",arr(ref("AuditEntry")))}},
}
# SSE alternative content on events
paths["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]={"schema":{"type":"object",
  "description":"Each event of the stream: `id` is the event's id, `event` its kind, `data` the Event object as JSON",
  "properties":{"id":S,"event":S,"data":S},"required":["data"]}}
doc={"openapi":"3.0.3","info":{"title":"SHG gateway API","version":"0.1.0",
  "description":"The API of one SHG gateway agent. On the local Unix socket (root only) a caller without a token is the operator; over HTTPS (`shg gateway run --listen`) every call but this document needs `Authorization: Bearer TOKEN` or a client certificate the operator registered. Realms: operator, provider (its own services only; others answer 404), home (every service; no provider logs or exec)."},
  "servers":[{"url":"https://localhost:8443"}],
  "security":[{"bearerAuth":[]}],
  "components":{"securitySchemes":{"bearerAuth":{"type":"http","scheme":"bearer"}},"schemas":schemas},
  "paths":paths}
print(json.dumps(doc, indent=2))
