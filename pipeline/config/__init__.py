"""``flows.yaml`` -> typed ``FlowConfig``: the file's reading and ``--set`` (``flows_file``) and the
schema with its checks (``schema``)."""
from pipeline.config.flows_file import ConfigError, parse_overrides, read_flows
from pipeline.config.schema import FlowConfig, flow_config_from_dict, load_flow

__all__ = ["ConfigError", "FlowConfig", "flow_config_from_dict", "load_flow", "parse_overrides", "read_flows"]
