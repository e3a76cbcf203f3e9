"""Wrong uses of the TensorRT API, planted to prove `trt_api.py` (next door) catches them.

Never imported or run. Each line that must be reported ends with ``# expect: MEMBER`` (on every
surface) or ``# expect: MEMBER @11`` (only on TensorRT 11.x surfaces); nothing else may be.
"""

import tensorrt as trt


class BadLogger(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)

    def log(self, msg):  # expect: ILogger.log
        print(msg)


def build(path, cache_bytes):
    logger = BadLogger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)  # expect: BuilderFlag.FP16 @11
    if hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)  # probed: fine on 11.x
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatches=0)  # expect: IBuilderConfig.set_timing_cache
    config.set_timing_cache(cache, ignore_mismatch=False)  # expect: IBuilderConfig.set_timing_cache
    builder.num_DLA_cores = 2  # expect: Builder.num_DLA_cores
    profile = builder.create_optimization_profile()
    small = (1, 3, 8, 8)
    profile.set_shape("x", small, small)  # expect: IOptimizationProfile.set_shape
    serialized = builder.build_serialized_network(network, config)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    assert isinstance(inspector, trt.IEngineInspector)  # expect: tensorrt.IEngineInspector
    return engine.get_binding_name(0)  # expect: ICudaEngine.get_binding_name
