"""lego-tvm: compile LegoNet models with Apache TVM."""
