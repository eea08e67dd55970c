from services.common.runner import run_service
from services.detect.main import DEFINITION

run_service(DEFINITION)
