#!/usr/bin/env python3
"""Renders the peerpods chart with the real Helm engine (PyPI helm-python-sdk,
Helm's Go SDK behind a C ABI) and validates every object against the
Kubernetes OpenAPI schemas (PyPI kubernetes-validate, strict: unknown
fields are errors). Used by tests/tests/chart.rs; prints one JSON document.

  helm_chart.py render CHART [-f VALUES]... [--set-json JSON] [--name N]
                [--namespace NS] [--validate 1.30,1.33]
      -> {"objects": [...], "crds": [...], "notes": "..."}; exit 1 and the
         Helm error on stderr when the values or a template fail;
         exit 2 and the objects' schema errors on stderr when validation fails.
  helm_chart.py lint CHART [-f VALUES]... [--set-json JSON] --kube-version V
      -> the lint report; exit 1 when it has errors or warnings.
"""

import argparse
import json
import sys

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as e:  # the Rust test prints this and fails
    print(
        f"missing Python module ({e}): run scripts/setup.sh --tests "
        "(pip: helm-python-sdk kubernetes-validate)",
        file=sys.stderr,
    )
    sys.exit(3)


def merged_values(files, set_json):
    """Values files in order, then --set-json, merged as Helm merges -f files."""
    out = {}
    for f in files:
        with open(f, encoding="utf-8") as fh:
            doc = helm.values_from_yaml(fh.read()) or {}
        out = deep_merge(out, doc)
    for s in set_json or []:
        out = deep_merge(out, json.loads(s))
    return out


def deep_merge(base, over):
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    res = dict(base)
    for k, v in over.items():
        res[k] = deep_merge(res[k], v) if k in res else v
    return res


def render(args):
    values = merged_values(args.values, args.set_json)
    with helm.Chart.load(args.chart) as chart:
        try:
            out = chart.render(
                values=values,
                name=args.name,
                namespace=args.namespace,
                is_install=True,
            )
        except helm.HelmError as e:
            print(str(e), file=sys.stderr)
            return 1
        crds = [yaml.safe_load(c["data"]) for c in chart.crds]
    objects, notes = [], ""
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            notes = out[path]
            continue
        for doc in yaml.safe_load_all(out[path]):
            if doc:
                doc.setdefault("metadata", {})
                objects.append({"template": path, "object": doc})
    errors = []
    for version in [v for v in (args.validate or "").split(",") if v]:
        full = version if version.count(".") == 2 else version + ".0"
        for item in objects + [{"template": "crds", "object": c} for c in crds]:
            obj = item["object"]
            try:
                kubernetes_validate.validate(obj, full, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(
                    f"{version} {item['template']} {obj.get('kind')}/"
                    f"{obj['metadata'].get('name')}: {e.message} at {list(e.path)}"
                )
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{version} {item['template']}: no schema: {e}")
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    json.dump(
        {"objects": [o["object"] for o in objects], "templates": [o["template"] for o in objects],
         "crds": crds, "notes": notes},
        sys.stdout,
    )
    return 0


def lint(args):
    values = merged_values(args.values, args.set_json)
    report = helm.lint(args.chart, values, strict=True, kube_version=args.kube_version)
    json.dump(report, sys.stdout)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("render", "lint"):
        s = sub.add_parser(name)
        s.add_argument("chart")
        s.add_argument("-f", "--values", action="append", default=[])
        s.add_argument("--set-json", action="append")
        s.add_argument("--name", default="peerpods")
        s.add_argument("--namespace", default="peerpods-system")
        if name == "render":
            s.add_argument("--validate", default="")
        else:
            s.add_argument("--kube-version", required=True)
    args = p.parse_args()
    return render(args) if args.cmd == "render" else lint(args)


if __name__ == "__main__":
    sys.exit(main())
