from ipykernel.kernelapp import IPKernelApp

from .kernel import FlowmetalKernel

IPKernelApp.launch_instance(kernel_class=FlowmetalKernel)
