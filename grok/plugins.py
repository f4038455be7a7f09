"""Plug-ins: every task, model, loss, optimizer and gradient transform is a Python object that its
config node names by `_target_` (conf/task/add.yaml: `_target_: grok.data.tasks.add`), as in
lightning-hydra-template. There is no registry to edit: a plug-in in your own module is selected the
same way, from your own config directory (README, "Extending").

What grok reads off a plug-in:
- `Config`: a dataclass, the schema of its node (default: `Named`, a `name` and nothing else). The
  node is merged over it at start-up, so a misspelled key or a value of the wrong type fails there,
  and keys the yaml leaves out take the schema's defaults.
- `check(cfg)`: optional; raises ConfigError with one line naming the bad field.
- the rest is the group's own interface: grok/data (tasks), grok/models (models), grok/training
  (losses, optimizers, gradient transforms).
"""

from dataclasses import dataclass
from typing import Any, Dict

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from grok.errors import ConfigError

TARGET = "_target_"


@dataclass
class Named:
    """The schema of a plug-in without settings of its own (a loss)."""

    name: str = MISSING


def plugin(node: Any, field: str) -> Any:
    """The object that `node._target_` names; ConfigError naming `field._target_` where it is missing or
    cannot be imported."""
    from hydra.utils import get_object

    target = node.get(TARGET) if isinstance(node, (dict, DictConfig)) else None
    if not isinstance(target, str):
        raise ConfigError(f"{field}: has no {TARGET}, the Python object that implements it (e.g. grok.data.tasks.add)")
    try:
        return get_object(target)
    except Exception as error:  # ImportError, AttributeError, or whatever the module raised on import
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, ModuleNotFoundError):
            cause += "; is its directory on PYTHONPATH?"
        raise ConfigError(f"{field}.{TARGET}={target}: cannot be imported ({cause})") from None


def typed(node: Any, field: str) -> DictConfig:
    """`node` merged over its plug-in's `Config`, `_target_` kept first; ConfigError naming the field
    on an unknown key or a value of the wrong type."""
    target = plugin(node, field)
    schema = OmegaConf.structured(getattr(target, "Config", Named))
    values = {key: value for key, value in OmegaConf.to_container(node, resolve=True).items() if key != TARGET}
    try:
        merged = OmegaConf.merge(schema, values)
    except OmegaConfBaseException as error:
        key = f"{field}.{error.full_key}" if getattr(error, "full_key", None) else field
        reason = str(error).splitlines()[0]
        if "Key" in reason and "not in" in reason:
            allowed = ", ".join(k for k in schema if k != TARGET)
            reason = f"not a key of {field}={node.get('name', target)}; its keys: {allowed}"
        raise ConfigError(f"{key}: {reason}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{field}.{missing[0]}: must be set (its schema has no default)")
    return OmegaConf.create({TARGET: node[TARGET], **OmegaConf.to_container(merged)})


def check(node: DictConfig, field: str) -> None:
    """The plug-in's own checks of its typed node, where it has any."""
    own_check = getattr(plugin(node, field), "check", None)
    if own_check is not None:
        own_check(node)


def plugins_of(nodes: Dict[str, Any], field: str) -> Dict[str, Any]:
    """{key: plug-in} for a group that selects several (transforms), in the order they were selected."""
    return {key: plugin(node, f"{field}.{key}") for key, node in nodes.items()}
