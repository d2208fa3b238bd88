"""The method, backbone-agnostic: regions -> token bitmasks (layout), prompts -> token spans (tokens),
ST-Layout attention kernels (attention), samplers (sampling), ReAtCo (reatco), FLATTEN (trajectories)."""
