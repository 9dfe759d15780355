# The pool (templates, clones, snapshots: chain/pool*.c) is part of cc_chain.  chain/CMakeLists.txt
# may pick the files up itself (CC_POOL_SOURCES) or include this file; never add them twice.
if(NOT CC_POOL_SOURCES)
  file(GLOB CC_POOL_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/pool*.c)
  target_sources(cc_chain PRIVATE ${CC_POOL_SOURCES})
endif()
