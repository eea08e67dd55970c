from services.common.runner import run_service
from services.hash.main import DEFINITION

run_service(DEFINITION)
